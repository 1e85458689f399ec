//! What the route modules share, and nothing that routes: the error body of
//! every route but `/graphql` ([`hangar_types::http::ErrorBody`], its status
//! from the code), JSON answers, the one limited body reader, and the bearer
//! token check. Route modules import this module; it imports none of them.

use bytes::{Buf, BytesMut};
use futures::{Stream, StreamExt};
use hangar_store::users;
use hangar_types::http::{ErrorBody, ErrorCode};
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::App;

/// Failures of a request as HTTP sees it, before any route's own logic.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge {
        limit: u64,
        /// How far the body got (or what it declared) when it was refused.
        read: u64,
    },
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
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            HttpError::BodyTooLarge { .. } => ErrorCode::PayloadTooLarge,
            HttpError::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            HttpError::Malformed(_) => ErrorCode::BadRequest,
            HttpError::InvalidToken => ErrorCode::Unauthenticated,
            HttpError::Unavailable => ErrorCode::Unavailable,
            HttpError::NotFound => ErrorCode::NotFound,
            HttpError::MethodNotAllowed => ErrorCode::MethodNotAllowed,
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        status_of(self.code())
    }

    pub(crate) fn into_response(self) -> Response {
        let mut r = error_response(self.code(), &self.to_string());
        if matches!(self, HttpError::InvalidToken) {
            r.headers_mut().insert(warp::http::header::WWW_AUTHENTICATE, warp::http::HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// The status an error `code` is answered with.
pub(crate) fn status_of(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// `body` as JSON with `status`.
pub(crate) fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// The error body every route but `/graphql` answers with:
/// `{"error": {"code": ..., "message": ...}}`, its status from the code.
pub(crate) fn error_response(code: ErrorCode, message: &str) -> Response {
    json_response(status_of(code), &ErrorBody::new(code, message))
}

/// Reads at most `limit` bytes of body; a chunk that would cross the limit
/// ends the read.
pub(crate) async fn read_limited<S, B>(body: S, limit: u64) -> Result<bytes::Bytes, HttpError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| HttpError::Malformed(format!("cannot read the body ({e})")))?;
        let read = (buf.len() + chunk.remaining()) as u64;
        if read > limit {
            return Err(HttpError::BodyTooLarge { limit, read });
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

/// The caller a bearer token in `auth` names; `None` without a token.
/// The console's session cookie as an `Authorization` value, for the GET
/// routes the console's pages read (logs, state downloads). Only a session
/// token is taken from a cookie, never an API key.
pub(crate) fn console_session(cookie: Option<&str>) -> Option<String> {
    hangar_console::session_token(cookie)
        .filter(|t| t.starts_with(&format!("{}_", users::SESSION_KIND)))
        .map(|t| format!("Bearer {t}"))
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
