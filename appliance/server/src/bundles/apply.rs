//! `POST /api/v1/bundles/{id}/apply`: a staged `tools` bundle's Terraform and
//! OpenTofu versions and providers, or a staged `worker` bundle's
//! `hangar-worker`, installed into the tools area (`[server] tools_dir` and
//! `provider_mirror_dir`) by `hangar_bundle::tools`. Admins only, audited,
//! one apply at a time. The bundle is opened again (its signature checked
//! against the trust store) and every file installed is hashed against its
//! manifest as it is written; a file already installed with the same
//! SHA-256 is left alone, so applying twice changes nothing, and one with
//! another SHA-256 refuses the bundle before anything is written.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use hangar_bundle::{Applied, Bundle, ToolsArea};
use serde::{Deserialize, Serialize};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use hangar_store::users::Caller;

use super::{StagedBundle, UploadError, admin, audit, io_error};
use crate::App;
use crate::http::json_response;

/// What `applied/{id}.json` keeps of an apply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppliedRecord {
    pub(crate) applied_by: String,
    pub(crate) applied_at: DateTime<Utc>,
    /// Files installed by this apply (an apply that found everything in
    /// place keeps the record of the first).
    pub(crate) installed: Vec<String>,
    pub(crate) unchanged: Vec<String>,
    pub(crate) skipped: Vec<String>,
}

/// The answer to an apply.
#[derive(Debug, Serialize)]
struct ApplyView<'a> {
    bundle: &'a StagedBundle,
    #[serde(flatten)]
    applied: &'a Applied,
}

pub(super) fn route(app: Arc<App>) -> BoxedFilter<(Response,)> {
    super::on_staged(app, "apply")
        .then(|id: String, app: Arc<App>, auth: Option<String>| async move {
            apply(&app, auth.as_deref(), &id).await.unwrap_or_else(UploadError::into_response)
        })
        .boxed()
}

async fn apply(app: &App, auth: Option<&str>, id: &str) -> Result<Response, UploadError> {
    let (caller, _) = admin(app, auth).await?;
    let done = apply_bundle(app, &caller, id).await?;
    Ok(json_response(
        StatusCode::OK,
        &ApplyView {
            bundle: &done.bundle,
            applied: &done.applied,
        },
    ))
}

/// What an apply did, and the staged bundle with its record.
pub(crate) struct Outcome {
    pub(crate) bundle: StagedBundle,
    pub(crate) applied: Applied,
}

/// Applies staged bundle `id` for `caller`, an admin (the API's and
/// GraphQL's `applyBundle` alike).
pub(crate) async fn apply_bundle(app: &App, caller: &Caller, id: &str) -> Result<Outcome, UploadError> {
    if !caller.role.allows(hangar_types::Role::Admin) {
        return Err(UploadError::Forbidden);
    }
    let staging = app.bundles.as_ref().ok_or(UploadError::NotConfigured)?;
    let mut staged = staging.staged_bundle(id).await?;
    let tools_dir = app.workers.tools_dir.clone().ok_or(UploadError::NoToolsArea)?;
    let mirror_dir = app.workers.mirror_dir.clone();
    let _one_at_a_time = staging.applying.lock().await;
    let path = staging.bundle_path(id);
    let trust = staging.trust.clone();
    let result = tokio::task::spawn_blocking(move || {
        let bundle = Bundle::open(&path, &trust)?;
        hangar_bundle::tools::apply(
            &bundle,
            &ToolsArea {
                tools_dir: &tools_dir,
                mirror_dir: mirror_dir.as_deref(),
            },
        )
    })
    .await
    .map_err(|e| UploadError::Io(format!("applying bundle {id}: {e}")))?;
    let applied = match result {
        Ok(a) => a,
        Err(source) => {
            tracing::warn!(bundle = id, error = %hangar_types::error_chain(&source), "a bundle apply was refused");
            audit(
                app,
                &caller.actor(),
                "bundle.apply_refused",
                id,
                serde_json::json!({ "kind": staged.kind, "version": staged.version, "code": source.code(), "reason": source.to_string() }),
            )
            .await;
            return Err(UploadError::Apply {
                id: id.to_string(),
                source,
            });
        }
    };
    tracing::info!(bundle = id, kind = %staged.kind, version = %staged.version, installed = applied.installed.len(), unchanged = applied.unchanged.len(), "bundle applied");
    // The first apply that installed something is the one remembered.
    let record = match staging.applied_record(id).await {
        Some(r) if applied.installed.is_empty() => r,
        _ => {
            let r = AppliedRecord {
                applied_by: caller.actor(),
                applied_at: Utc::now(),
                installed: applied.installed.clone(),
                unchanged: applied.unchanged.clone(),
                skipped: applied.skipped.clone(),
            };
            let target = staging.applied_path(id);
            let tmp = target.with_extension("json.tmp");
            let text = serde_json::to_vec_pretty(&r).expect("a record serializes");
            tokio::fs::write(&tmp, text).await.map_err(|e| io_error("cannot write", &tmp, e))?;
            tokio::fs::rename(&tmp, &target).await.map_err(|e| io_error("cannot write", &target, e))?;
            r
        }
    };
    audit(
        app,
        &caller.actor(),
        "bundle.applied",
        id,
        serde_json::json!({
            "kind": staged.kind,
            "version": staged.version,
            "installed": applied.installed,
            "unchanged": applied.unchanged.len(),
            "skipped": applied.skipped.len(),
        }),
    )
    .await;
    staged.applied = Some(record);
    Ok(Outcome {
        bundle: staged,
        applied,
    })
}
