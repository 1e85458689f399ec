//! The routes on 1983: `/health`, `/ready` and `POST /graphql`.
//!
//! async-graphql-warp 7 is built on warp 0.3, so the GraphQL filter is written
//! here for warp 0.4: body limit, bearer token to caller, JSON to request,
//! execution with the caller in the request data, JSON out. Every HTTP-level
//! failure maps to a status through [`HttpError::status`].

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::App;
use crate::api::{ApiSchema, Identity, PoolDirectory};
use hangar_store::users;

/// Failures answered before GraphQL runs.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("request body must be application/json")]
    UnsupportedMediaType,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("invalid, expired or revoked token")]
    InvalidToken,
    #[error("service unavailable: the database cannot be reached")]
    Unavailable,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
}

impl HttpError {
    fn status(&self) -> StatusCode {
        match self {
            HttpError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            HttpError::Malformed(_) => StatusCode::BAD_REQUEST,
            HttpError::InvalidToken => StatusCode::UNAUTHORIZED,
            HttpError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::NotFound => StatusCode::NOT_FOUND,
            HttpError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            HttpError::BodyTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            HttpError::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            HttpError::Malformed(_) => "BAD_REQUEST",
            HttpError::InvalidToken => "UNAUTHENTICATED",
            HttpError::Unavailable => "UNAVAILABLE",
            HttpError::NotFound => "NOT_FOUND",
            HttpError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
        }
    }

    /// A GraphQL-shaped error body, so clients parse one format.
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{ "message": self.to_string(), "extensions": { "code": self.code() } }]
        });
        let mut r = json_response(self.status(), &body);
        if matches!(self, HttpError::InvalidToken) {
            r.headers_mut().insert(warp::http::header::WWW_AUTHENTICATE, warp::http::HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// The body of `POST /graphql` (GraphQL over HTTP). Unknown keys are refused
/// rather than ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GraphQlBody {
    query: String,
    #[serde(default)]
    operation_name: Option<String>,
    #[serde(default)]
    variables: Option<serde_json::Value>,
    #[serde(default)]
    extensions: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Every route of the server.
pub(crate) fn routes(app: Arc<App>, schema: ApiSchema, max_body: u64) -> BoxedFilter<(Response,)> {
    let health = warp::path!("health")
        .and(warp::get().or(warp::head()).unify())
        .map(|| warp::reply::json(&serde_json::json!({ "status": "ok" })).into_response());

    let ready_app = app.clone();
    let ready = warp::path!("ready").and(warp::get().or(warp::head()).unify()).then(move || {
        let app = ready_app.clone();
        async move {
            let (ok, body) = crate::ready::report(&app).await;
            let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            warp::reply::with_status(warp::reply::json(&body), status).into_response()
        }
    });

    let state = crate::state::routes(app.clone());
    let workers = crate::workers::routes(app.clone());

    let app_for_webhooks = app.clone();
    let logs = crate::logs::sse::route(app.clone());

    let graphql = warp::path!("graphql")
        .and(warp::post())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(move |auth, content_type, length, body| {
            let (app, schema) = (app.clone(), schema.clone());
            async move { graphql(app, schema, max_body, auth, content_type, length, body).await }
        });

    let graphql_other = warp::path!("graphql").map(|| HttpError::MethodNotAllowed.into_response());
    let webhooks = crate::webhooks::route(app_for_webhooks);

    health
        .or(ready)
        .unify()
        .or(logs)
        .unify()
        .or(state)
        .unify()
        .or(workers)
        .unify()
        .or(graphql)
        .unify()
        .or(graphql_other)
        .unify()
        .or(webhooks)
        .unify()
        .recover(|rejection: warp::Rejection| async move {
            let e = if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
                HttpError::MethodNotAllowed
            } else if rejection.is_not_found() {
                HttpError::NotFound
            } else {
                HttpError::Malformed("unreadable request".into())
            };
            Ok::<_, std::convert::Infallible>(e.into_response())
        })
        .unify()
        .boxed()
}

/// `body` as JSON with `status`: every JSON answer outside GraphQL's own
/// responses is shaped here.
pub(crate) fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// `{"error": "<message>"}` with `status`: the error body of the non-GraphQL
/// APIs (the worker protocol), one line a client can show as it is.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    json_response(status, &serde_json::json!({ "error": message }))
}

/// Reads at most `limit` bytes of body.
pub(crate) async fn read_limited<S, B>(body: S, limit: u64) -> Result<bytes::Bytes, HttpError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| HttpError::Malformed(format!("cannot read the body ({e})")))?;
        if (buf.len() + chunk.remaining()) as u64 > limit {
            return Err(HttpError::BodyTooLarge { limit });
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            buf.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

pub(crate) async fn caller(app: &App, auth: Option<&str>) -> Result<Option<users::Caller>, HttpError> {
    let Some(auth) = auth else { return Ok(None) };
    let token = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or(HttpError::InvalidToken)?;
    let mut conn = app.db.get().await.map_err(|e| {
        tracing::warn!(error = %hangar_types::error_chain(&e), "cannot check a token: database unavailable");
        HttpError::Unavailable
    })?;
    match users::resolve_token(&mut conn, token).await {
        Ok(Ok(c)) => Ok(Some(c)),
        Ok(Err(refusal)) => {
            tracing::info!(reason = refusal.as_str(), "bearer token refused");
            Err(HttpError::InvalidToken)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot check a token");
            Err(HttpError::Unavailable)
        }
    }
}

async fn graphql<S, B>(
    app: Arc<App>,
    schema: ApiSchema,
    max_body: u64,
    auth: Option<String>,
    content_type: Option<String>,
    length: Option<u64>,
    body: S,
) -> Response
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    // Refuse a declared oversize body without reading it.
    if length.is_some_and(|l| l > max_body) {
        return HttpError::BodyTooLarge { limit: max_body }.into_response();
    }
    let json_type = content_type
        .as_deref()
        .and_then(|c| c.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return HttpError::UnsupportedMediaType.into_response();
    }
    let bytes = match read_limited(body, max_body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let caller = match caller(&app, auth.as_deref()).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let parsed: GraphQlBody = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => return HttpError::Malformed(e.to_string()).into_response(),
    };
    let mut request = async_graphql::Request::new(parsed.query);
    if let Some(op) = parsed.operation_name {
        request = request.operation_name(op);
    }
    match parsed.variables {
        None | Some(serde_json::Value::Null) => {}
        Some(v @ serde_json::Value::Object(_)) => request = request.variables(async_graphql::Variables::from_json(v)),
        Some(_) => return HttpError::Malformed("variables must be an object".into()).into_response(),
    }
    let _ = parsed.extensions;
    if caller.is_none() {
        request = request.disable_introspection();
    }
    let response = schema.execute(request.data(Identity(caller)).data(PoolDirectory::default())).await;
    warp::reply::json(&response).into_response()
}
