//! `POST /api/v1/bundles/{id}/upgrade`: a staged appliance bundle handed to
//! the installer's upgrade agent, which runs `hangar-install upgrade` as root
//! on the appliance host (pre-checks, backup, switch, migrate, health gate,
//! rollback on failure). The server writes the request and answers 202 at
//! once: the upgrade stops this server on its way. Its progress is read back
//! from the agent's files (see [`hangar_types::upgrade`]) by `GET
//! /api/v1/bundles` and the console's System page. Admins only, audited, one
//! upgrade at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use hangar_types::upgrade::{self as contract, UpgradeDone, UpgradeRequest, UpgradeTaken};
use serde::Serialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use hangar_store::users::Caller;

use super::{StagedBundle, Staging, UploadError, admin, audit, id_ok, io_error, new_id};
use crate::App;
use crate::http::json_response;

/// Where an upgrade asked for stands, as the API and the console show it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct UpgradeView {
    pub(crate) id: String,
    /// `requested` (waiting for the agent), `running`, or how it ended:
    /// `completed`, `rolled-back`, `refused`, `failed`.
    pub(crate) state: String,
    pub(crate) version: String,
    pub(crate) requested_by: String,
    pub(crate) requested_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) message: Option<String>,
    /// The upgrade's output on the appliance host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) log: Option<String>,
}

impl UpgradeView {
    pub(crate) fn ended(&self) -> bool {
        !matches!(self.state.as_str(), "requested" | "running")
    }
}

pub(super) fn dir(staging: &Staging) -> PathBuf {
    staging.dir.join(contract::DIR)
}

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Every upgrade asked for, oldest first.
pub(crate) fn upgrades(staging: &Staging) -> Vec<(UpgradeRequest, UpgradeView)> {
    let dir = dir(staging);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".request.json") else { continue };
        if !id_ok(id) {
            continue;
        }
        let Some(req) = read::<UpgradeRequest>(&e.path()) else { continue };
        let taken: Option<UpgradeTaken> = read(&dir.join(format!("{id}.taken.json")));
        let done: Option<UpgradeDone> = read(&dir.join(format!("{id}.done.json")));
        let state = match (&taken, &done) {
            (_, Some(d)) => d.outcome.as_str(),
            (Some(_), None) => "running",
            (None, None) => "requested",
        };
        let view = UpgradeView {
            id: req.id.clone(),
            state: state.to_string(),
            version: req.version.clone(),
            requested_by: req.requested_by.clone(),
            requested_at: req.requested_at.clone(),
            started_at: taken.as_ref().map(|t| t.started_at.clone()),
            finished_at: done.as_ref().map(|d| d.finished_at.clone()),
            message: done.as_ref().map(|d| d.message.clone()),
            log: done.as_ref().map(|d| d.log.clone()).or(taken.as_ref().map(|t| t.log.clone())),
        };
        out.push((req, view));
    }
    out.sort_by(|a, b| a.0.requested_at.cmp(&b.0.requested_at).then(a.0.id.cmp(&b.0.id)));
    out
}

/// The last upgrade asked for with bundle `id`.
pub(crate) fn of_bundle(staging: &Staging, id: &str) -> Option<UpgradeView> {
    upgrades(staging).into_iter().rev().find(|(r, _)| r.bundle == id).map(|(_, v)| v)
}

/// The upgrade asked for and not ended, if any.
pub(crate) fn under_way(staging: &Staging) -> Option<UpgradeView> {
    upgrades(staging).into_iter().map(|(_, v)| v).find(|v| !v.ended())
}

pub(super) fn route(app: Arc<App>) -> BoxedFilter<(Response,)> {
    super::on_staged(app, "upgrade")
        .then(|id: String, app: Arc<App>, auth: Option<String>| async move {
            upgrade(&app, auth.as_deref(), &id).await.unwrap_or_else(UploadError::into_response)
        })
        .boxed()
}

async fn upgrade(app: &App, auth: Option<&str>, id: &str) -> Result<Response, UploadError> {
    let (caller, _) = admin(app, auth).await?;
    let (bundle, upgrade) = request_upgrade(app, &caller, id).await?;
    Ok(json_response(StatusCode::ACCEPTED, &serde_json::json!({ "bundle": bundle, "upgrade": upgrade })))
}

/// Asks the upgrade agent to upgrade the appliance with staged bundle `id`,
/// for `caller`, an admin (the API's and GraphQL's `upgradeAppliance`).
pub(crate) async fn request_upgrade(
    app: &App,
    caller: &Caller,
    id: &str,
) -> Result<(StagedBundle, UpgradeView), UploadError> {
    if !caller.role.allows(hangar_types::Role::Admin) {
        return Err(UploadError::Forbidden);
    }
    let staging = app.bundles.as_ref().ok_or(UploadError::NotConfigured)?;
    let staged = staging.staged_bundle(id).await?;
    if staged.kind != "appliance" {
        return Err(UploadError::Invalid(format!(
            "bundle {id} is a {} bundle, not a release: apply it (POST /api/v1/bundles/{id}/apply)",
            staged.kind
        )));
    }
    let running = env!("CARGO_PKG_VERSION");
    if staged.version == running {
        return Err(UploadError::Invalid(format!("release {running} is the one running: there is nothing to upgrade to")));
    }
    // One at a time: the check and the write under the apply lock.
    let _one_at_a_time = staging.applying.lock().await;
    if let Some(u) = under_way(staging) {
        return Err(UploadError::UpgradeUnderWay(format!(
            "the upgrade to {} asked by {} at {} is {} ({})",
            u.version, u.requested_by, u.requested_at, u.state, u.id
        )));
    }
    let dir = dir(staging);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| io_error("cannot create", &dir, e))?;
    let req = UpgradeRequest {
        id: new_id(),
        bundle: id.to_string(),
        sha256: staged.sha256.clone(),
        version: staged.version.clone(),
        requested_by: caller.actor(),
        requested_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    };
    let target = dir.join(format!("{}.request.json", req.id));
    let tmp = dir.join(format!("{}.request.tmp", req.id));
    let text = serde_json::to_vec_pretty(&req).expect("a request serializes");
    tokio::fs::write(&tmp, text).await.map_err(|e| io_error("cannot write", &tmp, e))?;
    tokio::fs::rename(&tmp, &target).await.map_err(|e| io_error("cannot write", &target, e))?;
    tracing::info!(bundle = id, version = %staged.version, request = %req.id, "an upgrade was asked for");
    audit(
        app,
        &caller.actor(),
        "appliance.upgrade_requested",
        &format!("release:{}", staged.version),
        serde_json::json!({ "bundle": id, "request": req.id, "from": running }),
    )
    .await;
    let view = UpgradeView {
        id: req.id,
        state: "requested".into(),
        version: req.version,
        requested_by: req.requested_by,
        requested_at: req.requested_at,
        started_at: None,
        finished_at: None,
        message: None,
        log: None,
    };
    Ok((staged, view))
}

/// What the console shows of the installer's record of an upgrade or a
/// restore (`<data>/upgrades/{id}.json`, beside the staging area; the
/// installer's own type reads it strictly, this one takes what it shows).
#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct HistoryRecord {
    pub(crate) id: String,
    pub(crate) kind: String,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) requested_by: String,
    pub(crate) started_at: chrono::DateTime<Utc>,
    pub(crate) outcome: String,
    #[serde(default)]
    pub(crate) steps: Vec<HistoryStep>,
    #[serde(default)]
    pub(crate) backup: Option<String>,
    #[serde(default)]
    pub(crate) downtime_secs: Option<f64>,
    #[serde(default)]
    pub(crate) error: Option<String>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct HistoryStep {
    pub(crate) name: String,
    pub(crate) phase: String,
    pub(crate) started_at: chrono::DateTime<Utc>,
    #[serde(default)]
    pub(crate) finished_at: Option<chrono::DateTime<Utc>>,
    #[serde(default)]
    pub(crate) ok: Option<bool>,
}

impl HistoryStep {
    /// `backup 1.6 s`, `rollback: start 0.4 s`, `migrate failed after 0.2 s`.
    pub(crate) fn line(&self) -> String {
        let name = if self.phase == "rollback" { format!("rollback: {}", self.name) } else { self.name.clone() };
        let secs = self.finished_at.map(|f| (f - self.started_at).num_milliseconds() as f64 / 1000.0);
        match (self.ok, secs) {
            (Some(true), Some(s)) => format!("{name} {s:.1} s"),
            (Some(false), Some(s)) => format!("{name} failed after {s:.1} s"),
            _ => format!("{name} (unfinished)"),
        }
    }
}

/// The installer's records, newest first, at most `limit`.
pub(crate) fn history(staging: &Staging, limit: usize) -> Vec<HistoryRecord> {
    let Some(dir) = staging.dir.parent().map(|p| p.join("upgrades")) else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut out: Vec<HistoryRecord> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".json") && !name.starts_with('.')
        })
        .filter_map(|e| read::<HistoryRecord>(&e.path()))
        .collect();
    out.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.id.cmp(&a.id)));
    out.truncate(limit);
    out
}
