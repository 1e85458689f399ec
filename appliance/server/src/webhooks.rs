//! `POST /webhooks/{kind}/{integration}`: inbound deliveries from git servers.
//!
//! A delivery is checked in this order, each failure answered at once and
//! nothing enqueued: an unknown kind, integration or a kind that is not the
//! integration's (404, all alike, so a sender learns nothing about which
//! integrations exist, whatever else is wrong with the request); a declared
//! or actual body over the vendor's limit ([`hangar_vcs::max_body`]: 413,
//! nothing read past it, nothing hashed); the vendor's signature or token with
//! the room to read it in ([`Budget`]: every delivery's body counts against
//! one budget of bytes in memory, so that many large anonymous bodies cannot
//! exhaust the server's memory before their signatures are checked; 503 when
//! no room frees up in a few seconds); the vendor's signature or token with
//! the integration's secret (401, constant-time, in `hangar-vcs`); a
//! form-encoded body Hangar cannot take (415, saying to choose JSON); a
//! document that is not a JSON object (400). A good delivery's JSON is
//! enqueued raw under the key `"{integration id}:{delivery id}"` with its row
//! in the delivery log, in one transaction, and answered 202 without parsing:
//! the drain does the rest. A redelivery answers 200 and enqueues nothing.
//! Bitbucket's unsigned "Test connection" ping is answered 200 with what it
//! means, and enqueues nothing either.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Buf;
use diesel_async::AsyncConnection;
use futures::Stream;
use hangar_db::jobs::{Delivery, Job};
use hangar_db::queue::{self, Enqueued};
use hangar_types::http::ErrorCode;
use hangar_vcs::{Vendor, Verifier, WebhookError};
use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::{Reply, Response};

use crate::App;
use crate::http::HttpError;
use hangar_store::vcs::{self as store, Kind};

/// Why a delivery was not accepted.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("no such webhook")]
    NotFound,
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    #[error("the body cannot be read")]
    Unreadable,
    #[error("the body is not a JSON object")]
    NotJson,
    #[error("service unavailable")]
    Unavailable,
    #[error("too many webhook deliveries are being read at once; send it again later")]
    Busy,
}

/// Room for webhook bodies in memory, in KiB, shared by every delivery.
pub(crate) struct Budget {
    kib: tokio::sync::Semaphore,
    total_kib: u32,
}

/// How long a delivery waits for room before it is answered 503.
const BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Budget {
    pub(crate) fn new(bytes: u64) -> Budget {
        let total_kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX);
        Budget { kib: tokio::sync::Semaphore::new(total_kib as usize), total_kib }
    }

    /// Reserves room for `bytes` (never more than the whole budget, so that a
    /// delivery the vendor's limit allows always fits when nothing else is
    /// being read); the room is given back when the permit is dropped.
    async fn reserve(&self, bytes: u64) -> Result<tokio::sync::SemaphorePermit<'_>, Refusal> {
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).clamp(1, self.total_kib);
        match tokio::time::timeout(BUDGET_WAIT, self.kib.acquire_many(kib)).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) | Err(_) => Err(Refusal::Busy),
        }
    }
}

impl Refusal {
    fn code(&self) -> ErrorCode {
        match self {
            Refusal::NotFound => ErrorCode::NotFound,
            // The VCS crate says how each refusal of a delivery is answered.
            Refusal::Webhook(e) => ErrorCode::for_status(e.http_status().as_u16()),
            Refusal::Unreadable | Refusal::NotJson => ErrorCode::BadRequest,
            Refusal::Unavailable | Refusal::Busy => ErrorCode::Unavailable,
        }
    }

    fn into_response(self) -> Response {
        match &self {
            // Answered, not refused: nothing was verified or queued, and the
            // text says so.
            Refusal::Webhook(e @ WebhookError::UnsignedTestConnection { .. }) => crate::http::json_response(
                e.http_status(),
                &json!({ "status": "ping", "message": e.to_string() }),
            ),
            _ => crate::http::error_response(self.code(), &self.to_string()),
        }
    }
}

/// The webhook route.
pub(crate) fn route(app: Arc<App>) -> BoxedFilter<(Response,)> {
    warp::path!("webhooks" / String / String)
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(move |kind: String, integration: String, headers: HeaderMap, body| {
            let app = app.clone();
            async move {
                match accept(&app, &kind, &integration, &headers, body).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::info!(kind = %kind.chars().take(32).collect::<String>(), integration = %integration.chars().take(64).collect::<String>(), status = e.code().status(), reason = %e, "webhook refused");
                        e.into_response()
                    }
                }
            }
        })
        .boxed()
}

async fn accept<S, B>(app: &App, kind: &str, name: &str, headers: &HeaderMap, body: S) -> Result<Response, Refusal>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let vendor: Vendor = kind.parse().map_err(|_| Refusal::NotFound)?;
    let mut conn = app.db.get().await.map_err(|e| {
        tracing::warn!(error = %hangar_types::error_chain(&e), "webhook: database unavailable");
        Refusal::Unavailable
    })?;
    let integration = store::by_name(&mut conn, name).await.map_err(|e| {
        tracing::warn!(error = %e, "webhook: cannot look up the integration");
        Refusal::Unavailable
    })?;
    let Some(integration) = integration.filter(|i| i.kind() == Kind::Vendor(vendor)) else {
        return Err(Refusal::NotFound);
    };
    // Nothing of the body has been read yet.
    let declared = headers
        .get(warp::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared {
        hangar_vcs::check_declared_length(vendor, len)?;
    }
    let secret = store::open(&mut conn, &app.secrets, integration.id).await.map_err(|e| {
        tracing::error!(integration = %integration.name, error = %hangar_types::error_chain(&e), "webhook: cannot open the webhook secret");
        Refusal::Unavailable
    })?;
    // An integration without a secret cannot authenticate anything: refused
    // like a wrong signature, never accepted unsigned.
    let verifier = secret
        .webhook_secret
        .as_ref()
        .and_then(|s| Verifier::new(vendor, s).ok())
        .ok_or(Refusal::Webhook(WebhookError::BadSignature { vendor, header: "(no webhook secret configured)" }))?;
    // No database connection is held while waiting for room or reading.
    drop(conn);
    let limit = hangar_vcs::max_body(vendor);
    let _room = app.webhook_budget.reserve(declared.unwrap_or(limit as u64)).await?;
    let body = crate::http::read_limited(body, limit as u64).await.map_err(|e| match e {
        HttpError::BodyTooLarge { read, .. } => Refusal::Webhook(WebhookError::TooLarge { vendor, size: read, limit }),
        _ => Refusal::Unreadable,
    })?;
    let delivery = verifier.verify(headers, &body, SystemTime::now())?;
    let document = delivery.document(&body);
    if serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(document).is_err() {
        return Err(Refusal::NotJson);
    }
    // Valid JSON is valid UTF-8.
    let text = String::from_utf8(document.to_vec()).map_err(|_| Refusal::NotJson)?;
    let job = Job::VcsDelivery(Delivery {
        integration: integration.id,
        delivery: delivery.id.clone(),
        event: delivery.event.clone(),
        body: text,
    })
    .to_new()
    .unique_key(format!("{}:{}", integration.id, delivery.id));
    let (integration_id, delivery_id, event) = (integration.id, delivery.id.clone(), delivery.event.clone());
    let mut conn = app.db.get().await.map_err(|e| {
        tracing::warn!(error = %hangar_types::error_chain(&e), "webhook: database unavailable");
        Refusal::Unavailable
    })?;
    let enqueued = conn
        .transaction::<_, hangar_store::StoreError, _>(async move |c| {
            let e = queue::enqueue(c, &job).await?;
            store::record_delivery(c, integration_id, &delivery_id, &event).await?;
            Ok(e)
        })
        .await
        .map_err(|e| {
            tracing::warn!(error = %hangar_types::error_chain(&e), "webhook: cannot enqueue the delivery");
            Refusal::Unavailable
        })?;
    let (status, state) = match enqueued {
        Enqueued::Created(_) => (StatusCode::ACCEPTED, "queued"),
        Enqueued::Duplicate { .. } => (StatusCode::OK, "duplicate"),
    };
    tracing::info!(integration = %integration.name, delivery = %delivery.id, event = %delivery.event, state, "webhook accepted");
    Ok(warp::reply::with_status(
        warp::reply::json(&json!({ "delivery": delivery.id, "status": state })),
        status,
    )
    .into_response())
}
