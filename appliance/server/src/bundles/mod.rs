//! Bundle uploads into the one staging area (`[server] bundles_dir`):
//! resumable, chunked, verified while they arrive, for admins only, audited.
//!
//! | request | answer |
//! |---|---|
//! | `POST /api/v1/bundles/uploads` `{"name": …, "size": …}` | 201, the upload: `{"id", "name", "size", "offset"}` |
//! | `PATCH /api/v1/bundles/uploads/{id}` with `Upload-Offset: N` and the bytes from N on | 200, the upload (`offset` grown), or with `"bundle"` once complete and verified |
//! | `GET /api/v1/bundles/uploads/{id}` | the upload: where to resume |
//! | `DELETE /api/v1/bundles/uploads/{id}` | 204: cancelled, its bytes removed |
//! | `GET /api/v1/bundles` | the staged bundles |
//! | `DELETE /api/v1/bundles/{id}` | 204: a staged bundle removed |
//! | `POST /api/v1/bundles/{id}/apply` | 200: a staged `tools` or `worker` bundle applied to the tools area (see [`apply`]) |
//! | `POST /api/v1/bundles/{id}/upgrade` | 202: the appliance upgraded to a staged `appliance` bundle by the installer's upgrade agent (see [`upgrade`]) |
//!
//! Layout: `uploads/{id}.json` and `uploads/{id}.part` while an upload is
//! under way (the part's length is its offset, so an upload survives a
//! restart of the server); `staged/{id}.bundle` and `staged/{id}.json` once
//! verified; `applied/{id}.json` once a staged bundle was applied;
//! `upgrades/` for the upgrades asked for. A refused upload's files are
//! removed at once.

mod apply;
mod upgrade;
mod verify;

pub(crate) use apply::apply_bundle;
pub(crate) use upgrade::{history, request_upgrade};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Buf;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use hangar_bundle::TrustStore;
use hangar_store::users::Caller;
use hangar_types::Role;
use hangar_types::http::ErrorCode;
use serde::{Deserialize, Serialize};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::App;
use crate::http::{HttpError, error_response, json_response};
use verify::{Outcome, Verifier};

/// Disk the staging area leaves free.
const RESERVE: u64 = 512 << 20;

/// The staging area and the uploads under way.
pub(crate) struct Staging {
    dir: PathBuf,
    trust: Arc<TrustStore>,
    max_bytes: u64,
    /// The console's origin: a console page's script may upload with its
    /// session (see [`auth`]).
    origin: String,
    uploads: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Session>>>>,
    /// One apply at a time: two bundles bringing the same file are compared
    /// one after the other, never both written.
    applying: tokio::sync::Mutex<()>,
}

/// What is kept of an upload under way.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadMeta {
    id: String,
    name: String,
    size: u64,
    created_by: String,
    created_at: DateTime<Utc>,
}

/// A verified bundle in the staging area.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StagedBundle {
    pub(crate) id: String,
    /// The name it was uploaded under.
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) version: String,
    pub(crate) platform: String,
    pub(crate) size: u64,
    /// SHA-256 of the whole file.
    pub(crate) sha256: String,
    /// Key ids of the trusted signatures.
    pub(crate) signers: Vec<String>,
    pub(crate) files: u64,
    pub(crate) uploaded_by: String,
    pub(crate) uploaded_at: DateTime<Utc>,
    /// When and by whom it was applied: from `applied/{id}.json`, never
    /// written into this record (which an older release reads strictly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) applied: Option<apply::AppliedRecord>,
    /// The last upgrade asked for with it (an appliance bundle): from
    /// `upgrades/`, never written into this record either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) upgrade: Option<upgrade::UpgradeView>,
}

struct Session {
    meta: UploadMeta,
    written: u64,
    verifier: Option<Verifier>,
    /// Removed or finished: a request that waited for the lock finds it so.
    gone: bool,
}

/// The answer describing an upload.
#[derive(Debug, Serialize)]
struct UploadView<'a> {
    id: &'a str,
    name: &'a str,
    size: u64,
    offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    bundle: Option<&'a StagedBundle>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUpload {
    name: String,
    size: u64,
}

/// Why a request about uploads failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UploadError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("bundle uploads need a token")]
    Unauthenticated,
    #[error("bundle uploads need the admin role")]
    Forbidden,
    #[error("bundle uploads are not configured on this appliance ([server] bundles_dir)")]
    NotConfigured,
    #[error("no upload {0} (finished, refused, cancelled, or never started)")]
    NoUpload(String),
    #[error("no staged bundle {0}")]
    NoBundle(String),
    #[error("the upload is at offset {current}, not {given}: resume from {current}")]
    Offset { given: u64, current: u64 },
    #[error("another request is writing upload {0}")]
    Busy(String),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "a bundle of {size} bytes exceeds the limit of {limit} bytes ([server] max_bundle_bytes)"
    )]
    TooLarge { size: u64, limit: u64 },
    #[error(
        "not enough free disk for a bundle of {size} bytes in the staging area {dir}: {free} bytes free, {promised} of them promised to uploads under way, {reserve} kept free"
    )]
    NoRoom { dir: String, size: u64, free: u64, promised: u64, reserve: u64 },
    #[error("the bundle is refused ({code}): {message}")]
    Refused { code: &'static str, message: String },
    #[error("the staging area failed: {0}")]
    Io(String),
    #[error("bundle {id} is not applied ({}): {source}", source.code())]
    Apply {
        id: String,
        #[source]
        source: hangar_bundle::ApplyError,
    },
    #[error("bundles are applied to the tools area ([server] tools_dir), which is not configured")]
    NoToolsArea,
    #[error("an upgrade is under way: {0}")]
    UpgradeUnderWay(String),
}

impl UploadError {
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            UploadError::Http(e) => e.code(),
            UploadError::Unauthenticated => ErrorCode::Unauthenticated,
            UploadError::Forbidden => ErrorCode::Forbidden,
            UploadError::NotConfigured | UploadError::NoUpload(_) | UploadError::NoBundle(_) => {
                ErrorCode::NotFound
            }
            UploadError::Offset { .. } | UploadError::Busy(_) => ErrorCode::Conflict,
            UploadError::Invalid(_) | UploadError::Refused { .. } => ErrorCode::BadRequest,
            UploadError::TooLarge { .. } | UploadError::NoRoom { .. } => ErrorCode::PayloadTooLarge,
            UploadError::Io(_) => ErrorCode::Internal,
            UploadError::Apply { source, .. } => match source {
                hangar_bundle::ApplyError::Conflict { .. } => ErrorCode::Conflict,
                hangar_bundle::ApplyError::NoMirror { .. } => ErrorCode::Conflict,
                hangar_bundle::ApplyError::Io { .. } => ErrorCode::Internal,
                hangar_bundle::ApplyError::Kind { .. }
                | hangar_bundle::ApplyError::Entry { .. }
                | hangar_bundle::ApplyError::NoWorkerBinary { .. }
                | hangar_bundle::ApplyError::Bundle(_) => ErrorCode::BadRequest,
            },
            UploadError::NoToolsArea | UploadError::UpgradeUnderWay(_) => ErrorCode::Conflict,
        }
    }

    fn into_response(self) -> Response {
        match self {
            UploadError::Http(e) => e.into_response(),
            e => error_response(e.code(), &e.to_string()),
        }
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> UploadError {
    tracing::error!(path = %path.display(), error = %e, "{what}");
    UploadError::Io(format!("{what} {}: {e}", path.display()))
}

impl Staging {
    /// The staging area of `config`, when uploads are configured.
    pub(crate) fn new(
        config: &hangar_config::ServerConfig,
    ) -> Result<Option<Staging>, crate::ServerError> {
        let Some(dir) = config.bundles_dir.clone() else {
            return Ok(None);
        };
        let mut trust = TrustStore::release();
        if let Some(keys) = &config.bundle_trust_dir {
            trust
                .add_dir(keys)
                .map_err(crate::ServerError::BundleTrust)?;
        }
        for sub in ["uploads", "staged", "applied", hangar_types::upgrade::DIR] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path)
                .map_err(|source| crate::ServerError::Staging { path, source })?;
        }
        Ok(Some(Staging {
            dir,
            trust: Arc::new(trust),
            max_bytes: config.max_bundle_bytes,
            origin: hangar_console::origin_of(&config.public_url),
            uploads: Default::default(),
            applying: tokio::sync::Mutex::new(()),
        }))
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        self.dir.join("uploads").join(format!("{id}.json"))
    }

    fn part_path(&self, id: &str) -> PathBuf {
        self.dir.join("uploads").join(format!("{id}.part"))
    }

    /// Where a staged bundle's file is.
    pub(crate) fn bundle_path(&self, id: &str) -> PathBuf {
        self.dir.join("staged").join(format!("{id}.bundle"))
    }

    fn info_path(&self, id: &str) -> PathBuf {
        self.dir.join("staged").join(format!("{id}.json"))
    }

    fn applied_path(&self, id: &str) -> PathBuf {
        self.dir.join("applied").join(format!("{id}.json"))
    }

    /// Refuses an upload of `size` bytes the staging area's disk cannot hold
    /// next to the rest of the uploads under way, keeping [`RESERVE`] free
    /// (a full disk would stop the database beside it).
    async fn room_for(&self, size: u64) -> Result<(), UploadError> {
        let dir = self.dir.clone();
        let (free, promised) = tokio::task::spawn_blocking(move || {
            let free = nix::sys::statvfs::statvfs(&dir)
                .map(|s| s.blocks_available() * s.fragment_size())
                .unwrap_or(u64::MAX);
            let mut promised = 0u64;
            for e in std::fs::read_dir(dir.join("uploads")).into_iter().flatten().flatten() {
                let path = e.path();
                if path.extension().is_some_and(|x| x == "json")
                    && let Some(meta) = std::fs::read(&path).ok().and_then(|t| serde_json::from_slice::<UploadMeta>(&t).ok())
                {
                    let written = std::fs::metadata(path.with_extension("part")).map(|m| m.len()).unwrap_or(0);
                    promised = promised.saturating_add(meta.size.saturating_sub(written));
                }
            }
            (free, promised)
        })
        .await
        .unwrap_or((u64::MAX, 0));
        if free.saturating_sub(promised).saturating_sub(RESERVE) < size {
            return Err(UploadError::NoRoom {
                dir: self.dir.display().to_string(),
                size,
                free,
                promised,
                reserve: RESERVE,
            });
        }
        Ok(())
    }

    /// Staged bundle `id`'s record, for an admin's operation on it.
    pub(crate) async fn staged_bundle(&self, id: &str) -> Result<StagedBundle, UploadError> {
        if !id_ok(id) {
            return Err(UploadError::NoBundle(id.to_string()));
        }
        let info = self.info_path(id);
        let Ok(text) = tokio::fs::read(&info).await else {
            return Err(UploadError::NoBundle(id.to_string()));
        };
        serde_json::from_slice(&text).map_err(|e| UploadError::Io(format!("{}: unreadable record: {e}", info.display())))
    }

    /// The record of the bundle's apply, if it was applied.
    async fn applied_record(&self, id: &str) -> Option<apply::AppliedRecord> {
        let text = tokio::fs::read(self.applied_path(id)).await.ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The session of upload `id`, loaded from disk after a restart.
    async fn session(&self, id: &str) -> Result<Arc<tokio::sync::Mutex<Session>>, UploadError> {
        if !id_ok(id) {
            return Err(UploadError::NoUpload(id.to_string()));
        }
        if let Some(s) = self
            .uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return Ok(s.clone());
        }
        let text = match tokio::fs::read(self.meta_path(id)).await {
            Ok(t) => t,
            Err(_) => return Err(UploadError::NoUpload(id.to_string())),
        };
        let meta: UploadMeta = serde_json::from_slice(&text)
            .map_err(|e| UploadError::Io(format!("upload {id}'s record is unreadable: {e}")))?;
        let written = tokio::fs::metadata(self.part_path(id))
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let session = Arc::new(tokio::sync::Mutex::new(Session {
            meta,
            written,
            verifier: None,
            gone: false,
        }));
        Ok(self
            .uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_insert(session)
            .clone())
    }

    /// Removes an upload's files and forgets it.
    async fn discard(&self, session: &mut Session) {
        session.gone = true;
        session.verifier = None;
        let id = session.meta.id.clone();
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        for path in [self.part_path(&id), self.meta_path(&id)] {
            if let Err(e) = tokio::fs::remove_file(&path).await
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::error!(path = %path.display(), error = %e, "cannot remove a refused upload's file");
            }
        }
    }

    /// The staged bundles, oldest first.
    pub(crate) async fn staged(&self) -> Result<Vec<StagedBundle>, UploadError> {
        let dir = self.dir.join("staged");
        let mut out = Vec::new();
        let mut entries = tokio::fs::read_dir(&dir)
            .await
            .map_err(|e| io_error("cannot list", &dir, e))?;
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| io_error("cannot list", &dir, e))?
        {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json")
                && let Ok(text) = tokio::fs::read(&path).await
                && let Ok(mut b) = serde_json::from_slice::<StagedBundle>(&text)
            {
                b.applied = self.applied_record(&b.id).await;
                b.upgrade = upgrade::of_bundle(self, &b.id);
                out.push(b);
            }
        }
        out.sort_by(|a, b| a.uploaded_at.cmp(&b.uploaded_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }
}

/// The session's lock: a request about an upload waits for the one writing
/// it (a client that went away is noticed within the wait) rather than
/// failing at once.
async fn lock_session(
    session: &Arc<tokio::sync::Mutex<Session>>,
    id: &str,
) -> Result<tokio::sync::OwnedMutexGuard<Session>, UploadError> {
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        session.clone().lock_owned(),
    )
    .await
    .map_err(|_| UploadError::Busy(id.to_string()))
}

/// Upload and bundle ids: 32 lowercase hexadecimal characters.
fn id_ok(id: &str) -> bool {
    hangar_types::upgrade::id_ok(id)
}

fn new_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// The admin behind `auth`, and the staging area.
async fn admin<'a>(app: &'a App, auth: Option<&str>) -> Result<(Caller, &'a Staging), UploadError> {
    let caller = crate::http::caller(app, auth)
        .await?
        .ok_or(UploadError::Unauthenticated)?;
    if !caller.role.allows(Role::Admin) {
        return Err(UploadError::Forbidden);
    }
    let staging = app.bundles.as_ref().ok_or(UploadError::NotConfigured)?;
    Ok((caller, staging))
}

async fn audit(app: &App, actor: &str, action: &str, target: &str, details: serde_json::Value) {
    let result = match app.db.get().await {
        Ok(mut conn) => hangar_store::audit::record(&mut conn, actor, action, target, details)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(hangar_types::error_chain(&e)),
    };
    if let Err(e) = result {
        tracing::error!(action, target, error = %e, "cannot record an audit event");
    }
}

/// The `Authorization` of a request about bundles: its own, or, from a
/// console page's script, the session of its cookie when the request also
/// carries the page's CSRF token (`X-Hangar-CSRF`) and origin.
pub(super) fn auth(app: Arc<App>) -> BoxedFilter<(Option<String>,)> {
    let origin = app.bundles.as_ref().map(|s| s.origin.clone()).unwrap_or_default();
    warp::method()
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("cookie"))
        .and(warp::header::optional::<String>("x-hangar-csrf"))
        .and(warp::header::optional::<String>("origin"))
        .and(warp::header::optional::<String>("host"))
        .map(
            move |method: warp::http::Method, auth: Option<String>, cookie: Option<String>, csrf: Option<String>, from: Option<String>, host: Option<String>| {
                let reads = method == warp::http::Method::GET || method == warp::http::Method::HEAD;
                auth.or_else(|| {
                    hangar_console::browser_write_token(cookie.as_deref(), csrf.as_deref(), from.as_deref(), host.as_deref(), &origin, reads)
                        .map(|t| format!("Bearer {t}"))
                })
            },
        )
        .boxed()
}

/// `POST /api/v1/bundles/{id}/{action}`: the bundle's id, the app and the
/// request's authorization, for the routes acting on a staged bundle.
pub(super) fn on_staged(
    app: Arc<App>,
    action: &'static str,
) -> impl Filter<Extract = (String, Arc<App>, Option<String>), Error = warp::Rejection> + Clone {
    warp::path("api")
        .and(warp::path("v1"))
        .and(warp::path("bundles"))
        .and(warp::path::param::<String>())
        .and(warp::path(action))
        .and(warp::path::end())
        .and(warp::post())
        .and(warp::any().map({
            let app = app.clone();
            move || app.clone()
        }))
        .and(auth(app))
}

/// The routes of this module.
pub(crate) fn routes(app: Arc<App>) -> BoxedFilter<(Response,)> {
    let auth = {
        let f = auth(app.clone());
        move || f.clone()
    };
    let with_app = {
        let app = app.clone();
        move || {
            let app = app.clone();
            warp::any().map(move || app.clone())
        }
    };

    let create = warp::path!("api" / "v1" / "bundles" / "uploads")
        .and(warp::post())
        .and(with_app())
        .and(auth())
        .and(warp::body::stream())
        .then(|app: Arc<App>, auth: Option<String>, body| async move {
            create(&app, auth.as_deref(), body)
                .await
                .unwrap_or_else(UploadError::into_response)
        });
    let patch = warp::path!("api" / "v1" / "bundles" / "uploads" / String)
        .and(warp::patch())
        .and(with_app())
        .and(auth())
        .and(warp::header::optional::<String>("upload-offset"))
        .and(warp::body::stream())
        .then(|id: String, app: Arc<App>, auth: Option<String>, offset: Option<String>, body| async move {
            append(&app, auth.as_deref(), &id, offset.as_deref(), body).await.unwrap_or_else(UploadError::into_response)
        });
    let show = warp::path!("api" / "v1" / "bundles" / "uploads" / String)
        .and(warp::get().or(warp::head()).unify())
        .and(with_app())
        .and(auth())
        .then(
            |id: String, app: Arc<App>, auth: Option<String>| async move {
                show(&app, auth.as_deref(), &id)
                    .await
                    .unwrap_or_else(UploadError::into_response)
            },
        );
    let cancel = warp::path!("api" / "v1" / "bundles" / "uploads" / String)
        .and(warp::delete())
        .and(with_app())
        .and(auth())
        .then(
            |id: String, app: Arc<App>, auth: Option<String>| async move {
                cancel(&app, auth.as_deref(), &id)
                    .await
                    .unwrap_or_else(UploadError::into_response)
            },
        );
    let list = warp::path!("api" / "v1" / "bundles")
        .and(warp::get())
        .and(with_app())
        .and(auth())
        .then(|app: Arc<App>, auth: Option<String>| async move {
            list(&app, auth.as_deref())
                .await
                .unwrap_or_else(UploadError::into_response)
        });
    let remove = warp::path!("api" / "v1" / "bundles" / String)
        .and(warp::delete())
        .and(with_app())
        .and(auth())
        .then(
            |id: String, app: Arc<App>, auth: Option<String>| async move {
                remove(&app, auth.as_deref(), &id)
                    .await
                    .unwrap_or_else(UploadError::into_response)
            },
        );
    create
        .or(patch)
        .unify()
        .or(show)
        .unify()
        .or(cancel)
        .unify()
        .or(list)
        .unify()
        .or(remove)
        .unify()
        .or(apply::route(app.clone()))
        .unify()
        .or(upgrade::route(app))
        .unify()
        .boxed()
}

/// The body of a small JSON request, at most 16 KiB.
async fn small_json<T: serde::de::DeserializeOwned, S, B>(body: S) -> Result<T, UploadError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let bytes = crate::http::read_limited(body, 16 * 1024).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| UploadError::Invalid(format!("the request body: {e}")))
}

async fn create<S, B>(app: &App, auth: Option<&str>, body: S) -> Result<Response, UploadError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let (caller, staging) = admin(app, auth).await?;
    let req: CreateUpload = small_json(body).await?;
    let name = req.name.trim();
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(UploadError::Invalid(
            "name: 1 to 255 characters, none of them control characters".into(),
        ));
    }
    if req.size == 0 {
        return Err(UploadError::Invalid(
            "size: a bundle has at least one byte".into(),
        ));
    }
    if req.size > staging.max_bytes {
        return Err(UploadError::TooLarge {
            size: req.size,
            limit: staging.max_bytes,
        });
    }
    staging.room_for(req.size).await?;
    let meta = UploadMeta {
        id: new_id(),
        name: name.to_string(),
        size: req.size,
        created_by: caller.actor(),
        created_at: Utc::now(),
    };
    let part = staging.part_path(&meta.id);
    tokio::fs::File::create(&part)
        .await
        .map_err(|e| io_error("cannot create", &part, e))?;
    let meta_path = staging.meta_path(&meta.id);
    let text = serde_json::to_vec(&meta).expect("an upload's record serializes");
    tokio::fs::write(&meta_path, text)
        .await
        .map_err(|e| io_error("cannot write", &meta_path, e))?;
    audit(
        app,
        &meta.created_by,
        "bundle.upload_started",
        &meta.id,
        serde_json::json!({ "name": meta.name, "size": meta.size }),
    )
    .await;
    let view = UploadView {
        id: &meta.id,
        name: &meta.name,
        size: meta.size,
        offset: 0,
        bundle: None,
    };
    let mut r = json_response(StatusCode::CREATED, &view);
    if let Ok(v) =
        warp::http::HeaderValue::from_str(&format!("/api/v1/bundles/uploads/{}", meta.id))
    {
        r.headers_mut().insert(warp::http::header::LOCATION, v);
    }
    staging
        .uploads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            meta.id.clone(),
            Arc::new(tokio::sync::Mutex::new(Session {
                meta,
                written: 0,
                verifier: None,
                gone: false,
            })),
        );
    Ok(r)
}

async fn show(app: &App, auth: Option<&str>, id: &str) -> Result<Response, UploadError> {
    let (_, staging) = admin(app, auth).await?;
    let session = staging.session(id).await?;
    let s = lock_session(&session, id).await?;
    if s.gone {
        return Err(UploadError::NoUpload(id.to_string()));
    }
    let view = UploadView {
        id,
        name: &s.meta.name,
        size: s.meta.size,
        offset: s.written,
        bundle: None,
    };
    Ok(json_response(StatusCode::OK, &view))
}

async fn cancel(app: &App, auth: Option<&str>, id: &str) -> Result<Response, UploadError> {
    let (caller, staging) = admin(app, auth).await?;
    let session = staging.session(id).await?;
    let mut s = lock_session(&session, id).await?;
    if s.gone {
        return Err(UploadError::NoUpload(id.to_string()));
    }
    staging.discard(&mut s).await;
    audit(
        app,
        &caller.actor(),
        "bundle.upload_cancelled",
        id,
        serde_json::json!({ "name": s.meta.name, "offset": s.written }),
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list(app: &App, auth: Option<&str>) -> Result<Response, UploadError> {
    let (_, staging) = admin(app, auth).await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "bundles": staging.staged().await? }),
    ))
}

async fn remove(app: &App, auth: Option<&str>, id: &str) -> Result<Response, UploadError> {
    let (caller, staging) = admin(app, auth).await?;
    if !id_ok(id) || tokio::fs::metadata(staging.info_path(id)).await.is_err() {
        return Err(UploadError::NoBundle(id.to_string()));
    }
    if let Some(u) = upgrade::of_bundle(staging, id).filter(|u| !u.ended()) {
        return Err(UploadError::UpgradeUnderWay(format!(
            "bundle {id} is being installed ({}): remove it once the upgrade ended",
            u.state
        )));
    }
    for path in [staging.info_path(id), staging.bundle_path(id), staging.applied_path(id)] {
        if let Err(e) = tokio::fs::remove_file(&path).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(io_error("cannot remove", &path, e));
        }
    }
    audit(
        app,
        &caller.actor(),
        "bundle.removed",
        id,
        serde_json::json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Appends the body to upload `id` at `offset`, feeding the verification as
/// it goes; the last byte stages the bundle or refuses it.
async fn append<S, B>(
    app: &App,
    auth: Option<&str>,
    id: &str,
    offset: Option<&str>,
    body: S,
) -> Result<Response, UploadError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let (caller, staging) = admin(app, auth).await?;
    let offset: u64 = offset
        .ok_or_else(|| UploadError::Invalid("Upload-Offset: the header is required".into()))?
        .trim()
        .parse()
        .map_err(|_| UploadError::Invalid("Upload-Offset: not a number of bytes".into()))?;
    let session = staging.session(id).await?;
    let mut s = lock_session(&session, id).await?;
    if s.gone {
        return Err(UploadError::NoUpload(id.to_string()));
    }
    if offset != s.written {
        return Err(UploadError::Offset {
            given: offset,
            current: s.written,
        });
    }
    let part = staging.part_path(id);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&part)
        .map_err(|e| io_error("cannot open", &part, e))?;
    // Bytes past the acknowledged offset (a write of a request that was cut
    // off) are cut back; the verification starts again if it read any.
    let on_disk = file
        .metadata()
        .map_err(|e| io_error("cannot read", &part, e))?
        .len();
    if on_disk != s.written {
        let keep = on_disk.min(s.written);
        file.set_len(keep)
            .map_err(|e| io_error("cannot truncate", &part, e))?;
        if keep < s.written {
            s.verifier = None;
        }
        s.written = keep;
        if offset != s.written {
            return Err(UploadError::Offset {
                given: offset,
                current: s.written,
            });
        }
    }
    if s.verifier
        .as_ref()
        .is_none_or(|v| v.finished() && v.refused().is_none())
    {
        s.verifier = Some(Verifier::start(
            part.clone(),
            s.meta.name.clone(),
            s.meta.size,
            s.written,
            staging.trust.clone(),
        ));
    }

    let mut body = std::pin::pin!(body);
    let mut failure = None;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(mut c) => c.copy_to_bytes(c.remaining()),
            // The client went away: what arrived stays, for a resume.
            Err(e) => {
                tracing::info!(upload = id, offset = s.written, error = %e, "an upload's body ended early");
                break;
            }
        };
        if s.written + chunk.len() as u64 > s.meta.size {
            failure = Some(UploadError::Invalid(format!(
                "the body goes past the {} bytes declared for the upload",
                s.meta.size
            )));
            break;
        }
        // The offset moves only once the bytes are written: a request cut
        // off mid-write leaves at most bytes past it, cut back above.
        let n = chunk.len() as u64;
        file = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            file.write_all(&chunk).map(|()| file)
        })
        .await
        .map_err(|e| UploadError::Io(format!("writing {}: {e}", part.display())))?
        .map_err(|e| io_error("cannot write", &part, e))?;
        s.written += n;
        if let Some(v) = &s.verifier {
            v.advance(s.written);
            if v.refused().is_some() {
                break;
            }
        }
    }
    let file = tokio::task::spawn_blocking(move || file.sync_data())
        .await
        .map_err(|e| UploadError::Io(format!("flushing {}: {e}", part.display())))?;
    file.map_err(|e| io_error("cannot flush", &staging.part_path(id), e))?;

    let refused_early = s.verifier.as_ref().and_then(Verifier::refused);
    if let Some(e) = failure {
        refuse(app, staging, &mut s, &caller, "too_long", e.to_string()).await;
        return Err(e);
    }
    if refused_early.is_some() || s.written == s.meta.size {
        let verifier = s
            .verifier
            .take()
            .expect("a verifier runs while bytes arrive");
        let outcome = tokio::task::spawn_blocking(move || verifier.join())
            .await
            .unwrap_or(Outcome::Stopped);
        return match outcome {
            Outcome::Done(Ok(verified)) => {
                let staged = stage(staging, &s.meta, verified).await?;
                s.gone = true;
                staging
                    .uploads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(id);
                audit(
                    app,
                    &caller.actor(),
                    "bundle.uploaded",
                    id,
                    serde_json::to_value(&staged).unwrap_or_default(),
                )
                .await;
                let view = UploadView {
                    id,
                    name: &s.meta.name,
                    size: s.meta.size,
                    offset: s.written,
                    bundle: Some(&staged),
                };
                Ok(json_response(StatusCode::OK, &view))
            }
            Outcome::Done(Err(refusal)) => {
                let code = refusal.code();
                let message = refusal.to_string();
                refuse(app, staging, &mut s, &caller, code, message.clone()).await;
                Err(UploadError::Refused { code, message })
            }
            Outcome::Stopped => Err(UploadError::Io(format!(
                "the verification of upload {id} stopped; send the last chunk again"
            ))),
        };
    }
    let view = UploadView {
        id,
        name: &s.meta.name,
        size: s.meta.size,
        offset: s.written,
        bundle: None,
    };
    Ok(json_response(StatusCode::OK, &view))
}

async fn refuse(
    app: &App,
    staging: &Staging,
    s: &mut Session,
    caller: &Caller,
    code: &str,
    message: String,
) {
    tracing::info!(upload = %s.meta.id, name = %s.meta.name, code, reason = %message, "bundle upload refused");
    staging.discard(s).await;
    audit(
        app,
        &caller.actor(),
        "bundle.upload_refused",
        &s.meta.id,
        serde_json::json!({ "name": s.meta.name, "size": s.meta.size, "code": code, "reason": message }),
    )
    .await;
}

/// Moves a verified upload into the staged bundles.
async fn stage(
    staging: &Staging,
    meta: &UploadMeta,
    v: verify::Verified,
) -> Result<StagedBundle, UploadError> {
    let staged = StagedBundle {
        id: meta.id.clone(),
        name: v.name,
        kind: v.kind.as_str().to_string(),
        version: v.version,
        platform: v.platform,
        size: meta.size,
        sha256: v.sha256,
        signers: v.signers,
        files: v.files,
        uploaded_by: meta.created_by.clone(),
        uploaded_at: Utc::now(),
        applied: None,
        upgrade: None,
    };
    let (part, bundle, info) = (
        staging.part_path(&meta.id),
        staging.bundle_path(&meta.id),
        staging.info_path(&meta.id),
    );
    tokio::fs::rename(&part, &bundle)
        .await
        .map_err(|e| io_error("cannot stage", &part, e))?;
    let text = serde_json::to_vec_pretty(&staged).expect("a staged bundle's record serializes");
    let tmp = info.with_extension("json.tmp");
    tokio::fs::write(&tmp, text)
        .await
        .map_err(|e| io_error("cannot write", &tmp, e))?;
    tokio::fs::rename(&tmp, &info)
        .await
        .map_err(|e| io_error("cannot write", &info, e))?;
    let _ = tokio::fs::remove_file(staging.meta_path(&meta.id)).await;
    Ok(staged)
}
