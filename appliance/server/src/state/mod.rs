//! Terraform's HTTP state backend at `/state/v1/{stack}`, and the download of
//! stored versions at `/api/v1/stacks/{stack}/state/versions/{id}`.
//!
//! Speaks what Terraform's `http` backend client sends: GET (200 with the
//! latest state, 204 when there is none), POST with `Content-MD5` and, while
//! locked, `?ID=<lock id>`, and LOCK/UNLOCK with its LockInfo JSON, answering
//! a held lock with 423 and the holder's LockInfo as the body (the client
//! prints the holder's id from it). Workers authenticate with basic auth
//! `run:<run token>`, which opens only the run's own stack and dies with the
//! run; an admin's API key (basic auth password or bearer) opens every stack
//! for operators' own `terraform`.
//!
//! Every accepted write is a new version: sealed with a data key, put in the
//! object store, recorded in `state_versions`. Writes to one stack are checked
//! and stored one at a time under the stack's row lock.
//!
//! Proposed and drift runs only plan, and run in parallel with each other and
//! with the stack's tracked run: their LOCK and UNLOCK succeed without taking
//! the stack's lock (a plan only reads the state) and their writes are refused.
//!
//! A lock taken by a run is released lazily: the next LOCK or write on the
//! stack drops it once the run is over, except on a stack awaiting
//! reconciliation (an apply that lost its worker), whose lock stays until an
//! operator force-unlocks it.
//!
//! An UNLOCK names the lock it releases: by the LockInfo body Terraform sends
//! after its own LOCK, or by `?ID=<lock id>` in the unlock address. A name
//! that is not the current lock's is refused with 423 and the holder's
//! LockInfo; an UNLOCK when nothing is locked, with 409. Terraform 1.0.3's
//! `force-unlock` sends no body at all (its HTTP client forgets the ID it was
//! given), so an empty UNLOCK names nothing: it releases only a lock the
//! caller itself holds (its own run's, or the same user's from a `terraform`
//! that died), and anyone else's is refused like a wrong name. An operator
//! releases another holder's lock with the API's `forceUnlockState(stack,
//! lockId)`, which names it. Every release of a lock by someone other than
//! its holder is audited with the holder it displaced (who, which run, since
//! when, and Terraform's own account).
//!
//! Terraform 1.0.3 shows only the lock's ID when it finds the state locked,
//! and waits for no lock (it ignores `-lock-timeout` over HTTP): who holds a
//! lock, for which run and since when is in the API (`stateLock`, and
//! `stateLock` on a stack).

pub(crate) mod api;
pub(crate) mod store;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Buf;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures::Stream;
use hangar_types::http::ErrorCode;
use hangar_types::{RunKind, Role};
use md5::Digest as _;
use serde::Deserialize;
use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, Method, StatusCode, header};
use warp::reply::{Reply, Response};

use crate::App;
use crate::http::{HttpError, error_response, read_limited, status_of};
use hangar_store::run_tokens::{self, TokenHolder};
use hangar_store::users::{self, Caller};
use hangar_store::{audit, stacks};
use store::{LockRow, VersionRow, Writer};

/// LockInfo is a few hundred bytes; anything near this is not one.
const LOCK_BODY_LIMIT: u64 = 64 * 1024;
const MAX_LOCK_ID: usize = 256;
const MAX_LINEAGE: usize = 256;

/// Everything the backend answers other than success. Statuses are the ones
/// Terraform's client distinguishes (see [`StateError::status`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    #[error("authentication required: basic auth with a run token or an admin's API key")]
    Unauthenticated,
    #[error("these credentials do not open the state of stack {slug:?}")]
    Forbidden { slug: String },
    #[error("a {kind} run only plans: it cannot write state")]
    ReadOnly { kind: RunKind },
    #[error("stack {slug:?} does not exist")]
    StackNotFound { slug: String },
    #[error("state version {id} of stack {slug:?} does not exist")]
    VersionNotFound { slug: String, id: String },
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("Content-MD5 {presented:?} does not match the body's MD5 ({actual})")]
    Md5Mismatch { presented: String, actual: String },
    #[error("the state is locked by {held_by}")]
    Locked { held_by: String, info: String },
    #[error("{0}")]
    Conflict(String),
    #[error("method not allowed on the state backend")]
    MethodNotAllowed,
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl StateError {
    fn code(&self) -> ErrorCode {
        match self {
            StateError::Unauthenticated => ErrorCode::Unauthenticated,
            StateError::Forbidden { .. } | StateError::ReadOnly { .. } => ErrorCode::Forbidden,
            StateError::StackNotFound { .. } | StateError::VersionNotFound { .. } => ErrorCode::NotFound,
            StateError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            StateError::Malformed(_) | StateError::Md5Mismatch { .. } => ErrorCode::BadRequest,
            StateError::Locked { .. } => ErrorCode::Locked,
            StateError::Conflict(_) => ErrorCode::Conflict,
            StateError::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            StateError::Unavailable(_) => ErrorCode::Unavailable,
            StateError::Internal(_) => ErrorCode::Internal,
        }
    }

    fn into_response(self) -> Response {
        let code = self.code();
        let mut r = match &self {
            // The client unmarshals the body of a 423 as the holder's LockInfo.
            StateError::Locked { info, .. } => {
                let mut r = warp::reply::with_status(info.clone(), status_of(code)).into_response();
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r
            }
            StateError::Internal(detail) => {
                let reference = rand::random::<u32>();
                tracing::error!(reference, error = %detail, "state backend request failed");
                error_response(code, &format!("internal error (reference {reference})"))
            }
            StateError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "state backend request failed: a dependency is unavailable");
                error_response(code, "service unavailable")
            }
            other => error_response(code, &other.to_string()),
        };
        let h = r.headers_mut();
        match self {
            StateError::Unauthenticated => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"hangar state\", charset=\"UTF-8\""));
            }
            StateError::MethodNotAllowed => {
                h.insert(header::ALLOW, HeaderValue::from_static("GET, POST, LOCK, UNLOCK"));
            }
            _ => {}
        }
        r
    }
}

impl From<diesel::result::Error> for StateError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match &e {
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => StateError::Unavailable(e.to_string()),
            _ => StateError::Internal(e.to_string()),
        }
    }
}

impl From<hangar_store::StoreError> for StateError {
    fn from(e: hangar_store::StoreError) -> Self {
        match e {
            hangar_store::StoreError::Query(q) => q.into(),
            other => StateError::Internal(hangar_types::error_chain(&other)),
        }
    }
}

impl From<HttpError> for StateError {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::BodyTooLarge { limit, .. } => StateError::TooLarge { limit },
            other => StateError::Malformed(other.to_string()),
        }
    }
}

/// Who is asking.
pub(crate) enum Principal {
    Run(TokenHolder, RunKind),
    User(Caller),
}

impl Principal {
    pub(crate) fn writer(&self) -> Writer {
        match self {
            Principal::Run(h, _) => Writer { run_id: Some(h.run_id), user_id: None, label: format!("run {}", h.run_id) },
            Principal::User(c) => Writer { run_id: None, user_id: Some(c.user_id), label: c.actor() },
        }
    }

    /// Admins may use a lock id they did not take (Terraform's force-unlock,
    /// finishing a stuck apply); a run only ever uses its own.
    fn is_operator(&self) -> bool {
        matches!(self, Principal::User(_))
    }

    /// A run that only plans (see the module's notes), by its kind.
    fn plans_only(&self) -> Option<RunKind> {
        match self {
            Principal::Run(_, kind) if !kind.holds_stack() => Some(*kind),
            _ => None,
        }
    }
}

/// The secret in an `Authorization` header: the password of basic auth (the
/// user name is not checked: Terraform's workers send `run`), or a bearer token.
fn presented_secret(auth: &str) -> Option<String> {
    let (scheme, rest) = auth.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = B64.decode(rest).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        Some(password.to_string())
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.to_string())
    } else {
        None
    }
}

pub(crate) async fn conn(app: &App) -> Result<hangar_db::PooledConn, StateError> {
    app.db.get().await.map_err(|e| StateError::Unavailable(hangar_types::error_chain(&e)))
}

/// A run token (for its run's stack) or a user's session or API key; what a
/// user may do is checked against the stack's space by [`stack_for`].
async fn authenticate(c: &mut AsyncPgConnection, auth: Option<&str>, runs: bool) -> Result<Principal, StateError> {
    let secret = auth.and_then(presented_secret).ok_or(StateError::Unauthenticated)?;
    if let Some((run_tokens::KIND, _)) = hangar_crypto::token_parts(&secret) {
        if !runs {
            return Err(StateError::Unauthenticated);
        }
        return match run_tokens::holder(c, &secret).await? {
            Some(h) => {
                let kind = store::run_kind(c, h.run_id).await?.and_then(|k| k.parse::<RunKind>().ok());
                // An unknown kind is treated as the most restricted one.
                Ok(Principal::Run(h, kind.unwrap_or(RunKind::Proposed)))
            }
            None => {
                tracing::info!("run token refused: unknown, or its run is over");
                Err(StateError::Unauthenticated)
            }
        };
    }
    match users::resolve_token(c, &secret).await? {
        Ok(caller) => Ok(Principal::User(caller)),
        Err(refusal) => {
            tracing::info!(reason = refusal.as_str(), "state credentials refused");
            Err(StateError::Unauthenticated)
        }
    }
}

/// The stack `slug` names, when the principal may open its state: a run its
/// own stack, a user one of a space where they hold `role` (a stack of a
/// space they cannot see does not exist for them).
async fn stack_for(c: &mut AsyncPgConnection, principal: &Principal, slug: &str, role: Role) -> Result<i64, StateError> {
    match principal {
        // A run's token opens its own stack and says nothing about others.
        Principal::Run(h, _) if h.stack_slug == slug => Ok(h.stack_id),
        Principal::Run(..) => Err(StateError::Forbidden { slug: slug.to_string() }),
        Principal::User(caller) => {
            let stack = stacks::stack_by_slug(c, slug)
                .await?
                .filter(|s| caller.sees(s.space_id))
                .ok_or_else(|| StateError::StackNotFound { slug: slug.to_string() })?;
            if !caller.may(stack.space_id, role) {
                tracing::info!(user = %caller.email, needed = role.as_str(), stack = slug, "state access refused: role too low in the stack's space");
                return Err(StateError::Forbidden { slug: slug.to_string() });
            }
            Ok(stack.id)
        }
    }
}

/// The two fields of a Terraform state that decide whether a write may follow
/// the current version.
#[derive(Debug, Deserialize)]
pub(crate) struct StateHeader {
    serial: u64,
    lineage: String,
}

pub(crate) fn parse_state(body: &[u8]) -> Result<StateHeader, StateError> {
    let h: StateHeader = serde_json::from_slice(body)
        .map_err(|e| StateError::Malformed(format!("the state is not a Terraform state JSON document ({e})")))?;
    if h.lineage.is_empty() || h.lineage.len() > MAX_LINEAGE || h.lineage.chars().any(char::is_control) {
        return Err(StateError::Malformed(format!("the state's lineage must be 1 to {MAX_LINEAGE} printable characters")));
    }
    if i64::try_from(h.serial).is_err() {
        return Err(StateError::Malformed("the state's serial is out of range".into()));
    }
    Ok(h)
}

#[derive(Debug, Deserialize)]
struct LockInfoId {
    #[serde(rename = "ID")]
    id: String,
}

/// The lock id of a LockInfo body.
fn parse_lock_info(body: &[u8]) -> Result<String, StateError> {
    let info: LockInfoId = serde_json::from_slice(body)
        .map_err(|e| StateError::Malformed(format!("the body is not Terraform lock info JSON ({e})")))?;
    check_lock_id(info.id)
}

pub(crate) fn check_lock_id(id: String) -> Result<String, StateError> {
    if id.is_empty() || id.len() > MAX_LOCK_ID || id.chars().any(char::is_control) {
        return Err(StateError::Malformed(format!("the lock ID must be 1 to {MAX_LOCK_ID} printable characters")));
    }
    Ok(id)
}

/// How a write's lock and history are checked.
pub(crate) enum WriteMode<'a> {
    /// Terraform's POST: the lock id it presented, if any.
    Backend { lock_id: Option<&'a str>, operator: bool },
    /// Import at stack creation: only into a stack without state or lock.
    Import,
}

pub(crate) enum Written {
    Stored(VersionRow),
    /// The same serial and the same bytes as the current version: nothing new.
    Unchanged(VersionRow),
}

fn md5_hex(body: &[u8]) -> (String, [u8; 16]) {
    let digest: [u8; 16] = md5::Md5::digest(body).into();
    (hex_lower(&digest), digest)
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn seal_context(object_key: &str) -> String {
    format!("state:{object_key}")
}

/// Checks `body` against the stack's lock and latest version and stores it as
/// a new version, all under the stack's row lock. A version a person (not a
/// run) writes is recorded in the audit trail in the same transaction.
///
/// The sealed object is put before the row that names it is inserted; when
/// the transaction then fails, the object is deleted again (best effort,
/// logged), so a refused or failed write leaves nothing in the bucket.
pub(crate) async fn write_version(
    app: &App,
    c: &mut AsyncPgConnection,
    stack: (i64, &str),
    body: &[u8],
    writer: &Writer,
    mode: WriteMode<'_>,
) -> Result<Written, StateError> {
    let (stack_id, slug) = stack;
    let header = parse_state(body)?;
    let (md5, _) = md5_hex(body);
    let serial = header.serial as i64;
    let uploaded: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let uploaded_ref = &uploaded;
    let result = c.transaction::<_, StateError, _>(async move |c| {
        if !store::hold_stack(c, stack_id).await? {
            return Err(StateError::Conflict("the stack was deleted".into()));
        }
        match mode {
            WriteMode::Backend { lock_id, operator } => {
                if let Some(stale) = store::release_if_stale(c, stack_id).await? {
                    tracing::info!(stack_id, lock = %stale.lock_id, held_by = %stale.held_by, "released the lock of a finished run");
                }
                match (store::current_lock(c, stack_id).await?, lock_id) {
                    (Some(l), Some(id)) if l.lock_id == id && (operator || writer.holds(&l)) => {}
                    (Some(l), _) => return Err(StateError::Locked { held_by: l.held_by, info: l.info }),
                    (None, Some(id)) => {
                        return Err(StateError::Conflict(format!(
                            "the state is not locked: lock {id:?} was released or force-unlocked; nothing was written"
                        )));
                    }
                    (None, None) => {}
                }
            }
            WriteMode::Import => {
                if let Some(l) = store::current_lock(c, stack_id).await? {
                    return Err(StateError::Locked { held_by: l.held_by, info: l.info });
                }
            }
        }
        if let Some(latest) = store::latest_version(c, stack_id).await? {
            if matches!(mode, WriteMode::Import) {
                return Err(StateError::Conflict(format!("the stack already has state (serial {})", latest.serial)));
            }
            if latest.lineage != header.lineage {
                return Err(StateError::Conflict(format!(
                    "lineage {:?} differs from the stored state's {:?}; nothing was written",
                    header.lineage, latest.lineage
                )));
            }
            if serial < latest.serial {
                return Err(StateError::Conflict(format!(
                    "serial {serial} is older than the stored state's {}; nothing was written",
                    latest.serial
                )));
            }
            if serial == latest.serial {
                if latest.md5 == md5 {
                    return Ok(Written::Unchanged(latest));
                }
                return Err(StateError::Conflict(format!(
                    "serial {serial} is already stored with different content; nothing was written"
                )));
            }
        }
        let object_key = format!("state/{stack_id}/{serial}-{:016x}", rand::random::<u64>());
        let sealed = app.secrets.seal(c, body, &seal_context(&object_key)).await?;
        app.objects
            .put(&object_key, &sealed.bytes)
            .await
            .map_err(|e| StateError::Unavailable(format!("object store: {}", hangar_types::error_chain(&e))))?;
        *uploaded_ref.lock().unwrap_or_else(|p| p.into_inner()) = Some(object_key.clone());
        let row = store::insert_version(
            c,
            &store::NewVersion {
                stack_id,
                serial,
                lineage: &header.lineage,
                md5: &md5,
                size: body.len() as i64,
                object_key: &object_key,
                data_key_id: sealed.data_key_id,
                writer,
            },
        )
        .await?;
        if writer.user_id.is_some() {
            let action = match mode {
                WriteMode::Backend { .. } => "state.write",
                WriteMode::Import => "state.import",
            };
            let via = if matches!(mode, WriteMode::Import) { "api" } else { "state backend" };
            audit::record(
                c,
                &writer.label,
                action,
                &format!("stack:{slug}"),
                json!({ "version": row.id, "serial": row.serial, "lineage": row.lineage, "size": row.size, "via": via }),
            )
            .await?;
        }
        Ok(Written::Stored(row))
    })
    .await;
    if result.is_err() {
        let orphan = uploaded.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(key) = orphan {
            match app.objects.delete(&key).await {
                Ok(()) => tracing::info!(stack = %slug, key = %key, "removed the object of a state write that failed"),
                Err(e) => tracing::warn!(stack = %slug, key = %key, error = %hangar_types::error_chain(&e), "the object of a failed state write was left in the object store"),
            }
        }
    }
    result
}

/// The plaintext of a stored version, checked against its recorded MD5.
pub(crate) async fn read_version(app: &App, c: &mut AsyncPgConnection, v: &VersionRow) -> Result<Vec<u8>, StateError> {
    let sealed = app
        .objects
        .get(&v.object_key)
        .await
        .map_err(|e| StateError::Unavailable(format!("object store: {}", hangar_types::error_chain(&e))))?;
    let sealed = hangar_store::secrets::Sealed { data_key_id: v.data_key_id, bytes: sealed };
    let plain = app.secrets.open(c, &sealed, &seal_context(&v.object_key)).await?;
    if md5_hex(&plain).0 != v.md5 {
        return Err(StateError::Internal(format!("state object {} does not match its recorded MD5", v.object_key)));
    }
    Ok(plain)
}

fn state_response(body: Vec<u8>, md5_hex: &str, extra: Option<(header::HeaderName, String)>) -> Response {
    let digest: Vec<u8> = (0..md5_hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&md5_hex[2 * i..2 * i + 2], 16).ok())
        .collect();
    let mut r = Response::new(body.into());
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&B64.encode(digest)) {
        h.insert("content-md5", v);
    }
    if let Some((name, value)) = extra
        && let Ok(v) = HeaderValue::from_str(&value)
    {
        h.insert(name, v);
    }
    r
}

fn ok_empty() -> Response {
    warp::reply::with_status(String::new(), StatusCode::OK).into_response()
}

/// Routes of the backend and of version downloads.
pub(crate) fn routes(app: Arc<App>) -> BoxedFilter<(Response,)> {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let backend_app = app.clone();
    let backend = warp::path!("state" / "v1" / String)
        .and(warp::method())
        .and(query)
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("content-md5"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(move |slug: String, method: Method, query: String, auth: Option<String>, md5: Option<String>, length: Option<u64>, body| {
            let app = backend_app.clone();
            async move {
                let req = BackendRequest { slug, method, query, auth, md5, length };
                backend(app, req, body).await.unwrap_or_else(StateError::into_response)
            }
        });
    let download = warp::path!("api" / "v1" / "stacks" / String / "state" / "versions" / String)
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("cookie"))
        .then(move |slug: String, id: String, auth: Option<String>, cookie: Option<String>| {
            let app = app.clone();
            // The console's "download the latest state" link sends its session cookie.
            let auth = auth.or_else(|| crate::http::console_session(cookie.as_deref()));
            async move { download(app, slug, id, auth).await.unwrap_or_else(StateError::into_response) }
        });
    backend.or(download).unify().boxed()
}

struct BackendRequest {
    slug: String,
    method: Method,
    query: String,
    auth: Option<String>,
    md5: Option<String>,
    length: Option<u64>,
}

async fn backend<S, B>(app: Arc<App>, req: BackendRequest, body: S) -> Result<Response, StateError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let limit = match req.method.as_str() {
        "POST" => app.max_state_bytes,
        "GET" | "LOCK" | "UNLOCK" => LOCK_BODY_LIMIT,
        _ => return Err(StateError::MethodNotAllowed),
    };
    let mut c = conn(&app).await?;
    let principal = authenticate(&mut c, req.auth.as_deref(), true).await?;
    let stack_id = stack_for(&mut c, &principal, &req.slug, Role::Admin).await?;
    // Refuse a declared oversize body without reading it.
    if req.length.is_some_and(|l| l > limit) {
        return Err(StateError::TooLarge { limit });
    }
    let body = read_limited(body, limit).await?;
    let writer = principal.writer();
    if let Some(kind) = principal.plans_only() {
        return match req.method.as_str() {
            "GET" => get_state(&app, &mut c, stack_id).await,
            "UNLOCK" if body.iter().all(u8::is_ascii_whitespace) => Ok(ok_empty()),
            "LOCK" | "UNLOCK" => parse_lock_info(&body).map(|_| ok_empty()),
            _ => Err(StateError::ReadOnly { kind }),
        };
    }
    match req.method.as_str() {
        "GET" => get_state(&app, &mut c, stack_id).await,
        "POST" => {
            let lock_id = url::form_urlencoded::parse(req.query.as_bytes())
                .find(|(k, _)| k == "ID")
                .map(|(_, v)| v.into_owned());
            if let Some(presented) = &req.md5 {
                let (hex, digest) = md5_hex(&body);
                let matches = B64.decode(presented.trim()).is_ok_and(|d| d == digest);
                if !matches {
                    return Err(StateError::Md5Mismatch { presented: presented.clone(), actual: hex });
                }
            }
            let mode = WriteMode::Backend { lock_id: lock_id.as_deref(), operator: principal.is_operator() };
            match write_version(&app, &mut c, (stack_id, &req.slug), &body, &writer, mode).await? {
                Written::Stored(v) => {
                    tracing::info!(stack = %req.slug, serial = v.serial, size = v.size, version = v.id, by = %writer.label, "state version stored");
                }
                Written::Unchanged(v) => {
                    tracing::debug!(stack = %req.slug, serial = v.serial, "state unchanged");
                }
            }
            Ok(ok_empty())
        }
        "LOCK" => lock(&mut c, stack_id, &req.slug, &body, &writer).await,
        "UNLOCK" => {
            let named = url::form_urlencoded::parse(req.query.as_bytes())
                .find(|(k, _)| k == "ID")
                .map(|(_, v)| v.into_owned());
            unlock(&mut c, stack_id, &req.slug, &body, named, &principal, &writer).await
        }
        _ => Err(StateError::MethodNotAllowed),
    }
}

async fn get_state(app: &App, c: &mut AsyncPgConnection, stack_id: i64) -> Result<Response, StateError> {
    let Some(v) = store::latest_version(c, stack_id).await? else {
        // Terraform reads 204 as "no state yet".
        return Ok(warp::reply::with_status(String::new(), StatusCode::NO_CONTENT).into_response());
    };
    let plain = read_version(app, c, &v).await?;
    Ok(state_response(plain, &v.md5, None))
}

async fn lock(c: &mut AsyncPgConnection, stack_id: i64, slug: &str, body: &[u8], writer: &Writer) -> Result<Response, StateError> {
    let id = parse_lock_info(body)?;
    let info = String::from_utf8(body.to_vec()).map_err(|_| StateError::Malformed("lock info is not UTF-8".into()))?;
    // A lock released between a failed insert and the read of the holder is
    // tried again; a few rounds settle any race.
    for _ in 0..3 {
        if let Some(stale) = store::release_if_stale(c, stack_id).await? {
            tracing::info!(stack = %slug, lock = %stale.lock_id, held_by = %stale.held_by, "released the lock of a finished run");
        }
        if store::try_lock(c, stack_id, &id, &info, writer).await? {
            // A person holding the state keeps every run off it: worth a trace.
            if writer.user_id.is_some() {
                audit::record(c, &writer.label, "state.lock", &format!("stack:{slug}"), json!({ "lock_id": id, "via": "state backend" }))
                    .await?;
            }
            tracing::info!(stack = %slug, lock = %id, by = %writer.label, "state locked");
            return Ok(ok_empty());
        }
        match store::current_lock(c, stack_id).await? {
            // A retried LOCK from the holder itself (its answer was lost).
            Some(l) if l.lock_id == id && writer.holds(&l) => return Ok(ok_empty()),
            Some(l) => return Err(StateError::Locked { held_by: l.held_by, info: l.info }),
            None => continue,
        }
    }
    Err(StateError::Conflict("the lock is contended; try again".into()))
}

async fn unlock(
    c: &mut AsyncPgConnection,
    stack_id: i64,
    slug: &str,
    body: &[u8],
    named_in_query: Option<String>,
    principal: &Principal,
    writer: &Writer,
) -> Result<Response, StateError> {
    // The body's LockInfo names the lock; failing that, `?ID=`. Terraform
    // 1.0.3's `force-unlock` sends neither (see the module's notes).
    let named = if body.iter().all(u8::is_ascii_whitespace) {
        match named_in_query {
            Some(id) => Some(check_lock_id(id)?),
            None => None,
        }
    } else {
        Some(parse_lock_info(body)?)
    };
    let Some(lock) = store::current_lock(c, stack_id).await? else {
        return Err(StateError::Conflict("the state is not locked".into()));
    };
    let own = writer.holds(&lock);
    let allowed = match &named {
        Some(id) => *id == lock.lock_id && (own || principal.is_operator()),
        // Naming nothing releases only the caller's own lock.
        None => own,
    };
    if !allowed {
        tracing::info!(
            stack = %slug,
            lock = %lock.lock_id,
            held_by = %lock.held_by,
            named = named.as_deref().unwrap_or("(nothing)"),
            by = %writer.label,
            "unlock refused: it does not name the lock held"
        );
        return Err(locked(lock));
    }
    if !store::unlock(c, stack_id, &lock.lock_id).await? {
        return match store::current_lock(c, stack_id).await? {
            Some(l) => Err(locked(l)),
            None => Err(StateError::Conflict("the state is not locked".into())),
        };
    }
    if !own {
        audit::record(c, &writer.label, "state.force_unlock", &format!("stack:{slug}"), displaced(&lock, "state backend"))
            .await?;
        tracing::warn!(stack = %slug, lock = %lock.lock_id, held_by = %lock.held_by, by = %writer.label, "state force-unlocked");
    } else {
        if writer.user_id.is_some() {
            audit::record(
                c,
                &writer.label,
                "state.unlock",
                &format!("stack:{slug}"),
                json!({ "lock_id": lock.lock_id, "via": "state backend" }),
            )
            .await?;
        }
        tracing::info!(stack = %slug, lock = %lock.lock_id, by = %writer.label, "state unlocked");
    }
    Ok(ok_empty())
}

/// The audit details of a forced release: the holder it displaced, as the
/// API shows a lock (who, which run, since when, and Terraform's account).
pub(crate) fn displaced(lock: &LockRow, via: &str) -> serde_json::Value {
    let info: serde_json::Value = serde_json::from_str(&lock.info).unwrap_or_default();
    let field = |k: &str| info.get(k).and_then(|v| v.as_str()).map(str::to_string);
    json!({
        "lock_id": lock.lock_id,
        "held_by": lock.held_by,
        "run_id": lock.run_id,
        "locked_at": lock.created_at,
        "who": field("Who"),
        "operation": field("Operation"),
        "via": via,
    })
}

fn locked(l: LockRow) -> StateError {
    StateError::Locked { held_by: l.held_by, info: l.info }
}

/// `GET /api/v1/stacks/{slug}/state/versions/{id}`: one stored version,
/// decrypted, for any user with read access; every download is audited.
async fn download(app: Arc<App>, slug: String, id: String, auth: Option<String>) -> Result<Response, StateError> {
    let mut c = conn(&app).await?;
    let principal = authenticate(&mut c, auth.as_deref(), false).await?;
    let Principal::User(caller) = &principal else {
        return Err(StateError::Unauthenticated);
    };
    stack_for(&mut c, &principal, &slug, Role::Reader).await?;
    let stack = stacks::stack_by_slug(&mut c, &slug).await?.ok_or_else(|| StateError::StackNotFound { slug: slug.clone() })?;
    let not_found = || StateError::VersionNotFound { slug: slug.clone(), id: id.chars().take(40).collect() };
    let vid: i64 = id.parse().ok().filter(|v| *v > 0).ok_or_else(not_found)?;
    let v = store::version(&mut c, vid).await?.filter(|v| v.stack_id == stack.id).ok_or_else(not_found)?;
    let plain = read_version(&app, &mut c, &v).await?;
    audit::record(
        &mut c,
        &caller.actor(),
        "state.download",
        &format!("stack:{slug}"),
        json!({ "version": v.id, "serial": v.serial }),
    )
    .await?;
    tracing::info!(stack = %slug, version = v.id, by = %caller.actor(), "state version downloaded");
    let disposition = format!("attachment; filename=\"{slug}-{}.tfstate\"", v.serial);
    Ok(state_response(plain, &v.md5, Some((header::CONTENT_DISPOSITION, disposition))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_basic_and_bearer() {
        let basic = format!("Basic {}", B64.encode("run:hrt_a_b"));
        assert_eq!(presented_secret(&basic).as_deref(), Some("hrt_a_b"));
        assert_eq!(presented_secret("Bearer hak_x_y").as_deref(), Some("hak_x_y"));
        assert_eq!(presented_secret("bearer  hak_x_y ").as_deref(), Some("hak_x_y"));
        for bad in ["", "Basic", "Basic !!!", &format!("Basic {}", B64.encode("nocolon")), "Digest x"] {
            assert_eq!(presented_secret(bad), None, "{bad}");
        }
    }

    #[test]
    fn states_and_lock_infos_are_checked() {
        assert!(parse_state(br#"{"version":4,"serial":3,"lineage":"abc","outputs":{}}"#).is_ok());
        for bad in [
            &br#"{"serial":3}"#[..],
            br#"{"serial":-1,"lineage":"a"}"#,
            br#"{"serial":1,"lineage":""}"#,
            br#"{"serial":18446744073709551615,"lineage":"a"}"#,
            br#"{"serial":1,"lineage":"a""#,
            b"[]",
            b"",
        ] {
            assert!(matches!(parse_state(bad), Err(StateError::Malformed(_))), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_lock_info(br#"{"ID":"x-1","Who":"me"}"#).unwrap(), "x-1");
        for bad in [&br#"{"ID":""}"#[..], br#"{"Who":"me"}"#, b"nope"] {
            assert!(parse_lock_info(bad).is_err());
        }
    }

    #[test]
    fn md5_matches_terraforms_header() {
        let (hex, digest) = md5_hex(b"");
        assert_eq!(hex, "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(B64.encode(digest), "1B2M2Y8AsgTpgAmY7PhCfg==");
    }
}
