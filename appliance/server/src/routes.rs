//! Every route on 1983, assembled in one place:
//!
//! | route | module |
//! |---|---|
//! | `GET /health` (200 while the process is up), `GET /ready` (200 only when the database, the object store and the hosted broker answer; a JSON report of each) | here, [`crate::ready`] |
//! | `POST /graphql` | [`crate::graphql`] |
//! | `GET /api/v1/runs/{id}/logs` (download, or Server-Sent Events with `follow=true`) | [`crate::logs`] |
//! | Terraform's HTTP state backend under `/state/v1/{stack}`, and `GET /api/v1/stacks/{stack}/state/versions/{id}` | [`crate::state`] |
//! | the worker API (`/api/v1/workers/join`, `/api/v1/worker/…`), tool downloads (`/v1/tools/…`) and the provider mirror (`/v1/providers/…`) | [`crate::workers`] |
//! | service discovery (`/.well-known/terraform.json`) and the private module registry (`/v1/modules/…`) | [`crate::registry`] |
//! | `POST /webhooks/{kind}/{integration}` | [`crate::webhooks`] |
//! | bundle uploads and the staged bundles under `/api/v1/bundles` | [`crate::bundles`] |
//! | the web console: `/`, its pages and `/assets/…` | `hangar_console`, with [`crate::console`] |
//!
//! Anything else is answered 404 (405 for a known path with another method)
//! in the error shape of [`crate::http`].

use std::sync::Arc;

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::App;
use crate::graphql::{Admission, ApiSchema};
use crate::http::HttpError;

/// Every route of the server.
pub(crate) fn routes(
    app: Arc<App>,
    schema: ApiSchema,
    admission: Admission,
    console: BoxedFilter<(Response,)>,
    max_body: u64,
) -> BoxedFilter<(Response,)> {
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

    health
        .or(ready)
        .unify()
        .or(crate::logs::sse::route(app.clone()))
        .unify()
        .or(crate::state::routes(app.clone()))
        .unify()
        .or(crate::workers::routes(app.clone()))
        .unify()
        .or(crate::registry::serve::routes(app.clone()))
        .unify()
        .or(crate::graphql::route(app.clone(), schema, admission, max_body))
        .unify()
        .or(crate::bundles::routes(app.clone()))
        .unify()
        .or(crate::webhooks::route(app))
        .unify()
        .or(console)
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
        // Every answer, API or console, carries the same security headers.
        .map(|mut r: Response| {
            hangar_console::secure(r.headers_mut());
            r
        })
        .boxed()
}
