//! A run's saved plan (and its `terraform show -json` output), sealed at rest: the worker sends the plan to the
//! appliance, which seals it with a data key before it reaches the object
//! store, and opens it again only for the worker holding the run.
//!
//! A plan carries the values of every variable, secret ones included, so it
//! is treated like state. The object is self-describing — a magic, the id of
//! the data key that sealed it, then the sealed bytes — so no column beyond
//! the run's `plan_key` is needed to open it.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use hangar_db::runs::RunRow;
use hangar_db::schema::runs;
use hangar_types::worker::PlanStored;
use warp::http::StatusCode;
use warp::reply::Reply;

use super::{Reply2, WorkerApiError, json};
use crate::App;
use hangar_store::secrets::Sealed;

/// Marks a sealed plan object, version 1 of its layout.
const MAGIC: &[u8; 8] = b"HGPLAN1\n";

/// Where a run's sealed plan lives.
pub(crate) fn plan_key(run: i64) -> String {
    format!("runs/{run}/plan.sealed")
}

/// The associated data a run's plan is sealed under: a plan object copied to
/// another run's key does not open there.
fn seal_context(run: i64) -> String {
    format!("run:{run}:plan")
}

fn encode(sealed: &Sealed) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 8 + sealed.bytes.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&sealed.data_key_id.to_be_bytes());
    out.extend_from_slice(&sealed.bytes);
    out
}

fn decode(object: Vec<u8>) -> Option<Sealed> {
    let rest = object.strip_prefix(MAGIC.as_slice())?;
    let (id, sealed) = rest.split_first_chunk::<8>()?;
    Some(Sealed { data_key_id: i64::from_be_bytes(*id), bytes: sealed.to_vec() })
}

/// `POST /api/v1/worker/runs/{id}/plan`: seals and stores `body` as the run's plan.
pub(crate) async fn store(app: &App, conn: &mut AsyncPgConnection, run: &RunRow, body: &[u8]) -> Reply2 {
    if run.state().is_terminal() {
        return Err(WorkerApiError::NotHolder { run: run.id });
    }
    if body.is_empty() {
        return Err(WorkerApiError::Malformed("the plan is empty".into()));
    }
    let key = plan_key(run.id);
    let sealed =
        app.secrets.seal(conn, body, &seal_context(run.id)).await.map_err(|e| WorkerApiError::internal("sealing a plan", e))?;
    app.objects.put(&key, &encode(&sealed)).await.map_err(|e| WorkerApiError::internal("storing a plan", e))?;
    diesel::update(runs::table.find(run.id))
        .set(runs::plan_key.eq(&key))
        .execute(conn)
        .await
        .map_err(WorkerApiError::db)?;
    let sha256 = hex::encode(ring::digest::digest(&ring::digest::SHA256, body));
    tracing::info!(run_id = run.id, bytes = body.len(), "plan stored sealed");
    Ok(json(StatusCode::OK, &PlanStored { size: body.len() as u64, sha256 }))
}

/// Where a run's sealed plan JSON lives, and the context it is sealed under.
fn plan_json_key(run: i64) -> (String, String) {
    (format!("runs/{run}/plan.json.sealed"), format!("run:{run}:plan-json"))
}

/// `POST /api/v1/worker/runs/{id}/plan-json`: seals and stores the plan as
/// `terraform show -json` printed it, for the plan policies.
pub(crate) async fn store_json(app: &App, conn: &mut AsyncPgConnection, run: &RunRow, body: &[u8]) -> Reply2 {
    if run.state().is_terminal() {
        return Err(WorkerApiError::NotHolder { run: run.id });
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
        return Err(WorkerApiError::Malformed("the plan JSON is not a JSON document".into()));
    }
    let (key, context) = plan_json_key(run.id);
    let sealed =
        app.secrets.seal(conn, body, &context).await.map_err(|e| WorkerApiError::internal("sealing a plan JSON", e))?;
    app.objects.put(&key, &encode(&sealed)).await.map_err(|e| WorkerApiError::internal("storing a plan JSON", e))?;
    diesel::update(runs::table.find(run.id))
        .set(runs::plan_json_key.eq(&key))
        .execute(conn)
        .await
        .map_err(WorkerApiError::db)?;
    tracing::info!(run_id = run.id, bytes = body.len(), "plan JSON stored sealed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The run's plan JSON, opened; `None` when its worker sent none.
pub(crate) async fn open_json(
    app: &App,
    conn: &mut AsyncPgConnection,
    run: i64,
) -> Result<Option<Vec<u8>>, crate::policies::PolicyFailure> {
    use crate::policies::PolicyFailure;
    let key: Option<String> = runs::table
        .find(run)
        .select(runs::plan_json_key)
        .first(conn)
        .await
        .map_err(|e| PolicyFailure::internal("reading a run's plan JSON key", e))?;
    let Some(key) = key else { return Ok(None) };
    let object = app.objects.get(&key).await.map_err(|e| PolicyFailure::internal("reading a plan JSON", e))?;
    let sealed = decode(object).ok_or_else(|| PolicyFailure::Internal(format!("{key} is not a sealed plan object")))?;
    let plain = app
        .secrets
        .open(conn, &sealed, &plan_json_key(run).1)
        .await
        .map_err(|e| PolicyFailure::internal("opening a plan JSON", e))?;
    Ok(Some(plain))
}

/// `GET /api/v1/worker/runs/{id}/plan`: the run's plan, opened.
pub(crate) async fn fetch(app: &App, conn: &mut AsyncPgConnection, run: &RunRow) -> Reply2 {
    if run.state().is_terminal() {
        return Err(WorkerApiError::NotHolder { run: run.id });
    }
    let key: Option<String> =
        runs::table.find(run.id).select(runs::plan_key).first(conn).await.map_err(WorkerApiError::db)?;
    let Some(key) = key else {
        return Err(WorkerApiError::NotFound(format!("run {} has no stored plan", run.id)));
    };
    let object = app.objects.get(&key).await.map_err(|e| WorkerApiError::internal("reading a plan", e))?;
    let sealed = decode(object).ok_or_else(|| {
        tracing::error!(run_id = run.id, key = %key, "the stored plan is not a sealed plan object");
        WorkerApiError::Internal
    })?;
    let plain = app
        .secrets
        .open(conn, &sealed, &seal_context(run.id))
        .await
        .map_err(|e| WorkerApiError::internal("opening a plan", e))?;
    let mut r = warp::reply::with_status(plain, StatusCode::OK).into_response();
    r.headers_mut().insert("content-type", warp::http::HeaderValue::from_static("application/octet-stream"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_layout_round_trips_and_refuses_other_objects() {
        let sealed = Sealed { data_key_id: 0x0102_0304_0506_0708, bytes: b"ciphertext".to_vec() };
        let object = encode(&sealed);
        assert!(object.starts_with(MAGIC));
        assert_eq!(decode(object), Some(sealed));
        assert_eq!(decode(b"a saved plan, as terraform wrote it".to_vec()), None);
        assert_eq!(decode(MAGIC.to_vec()), None);
        assert_eq!(decode(b"HGPLAN1\n1234".to_vec()), None);
    }
}
