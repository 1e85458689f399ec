//! Terraform's module registry protocol, as Terraform 1.0 speaks it:
//!
//! | route | answer |
//! |---|---|
//! | `GET /.well-known/terraform.json` | service discovery: `{"modules.v1": "/v1/modules/"}` (no credentials, as for any registry) |
//! | `GET /v1/modules/{namespace}/{name}/{system}/versions` | `{"modules":[{"versions":[{"version":"1.0.0"},…]}]}` |
//! | `GET /v1/modules/{namespace}/{name}/{system}/{version}/download` | 204 with `X-Terraform-Get`, a link to the archive |
//! | `GET /v1/modules/{namespace}/{name}/{system}/{version}/archive.tar.gz?expires=…&signature=…` | the archive |
//!
//! Discovery aside, callers present `Authorization: Bearer` with a run's
//! token (what the worker's Terraform CLI configuration names for the
//! appliance's host, so stock Terraform sends it) or a user's session or
//! API key (a reader or above). Terraform sends no credentials when it
//! fetches the `X-Terraform-Get` location (go-getter's HTTP getter knows
//! nothing of them), so that location is a link that authorizes itself: the
//! version's id and an expiry five minutes ahead, signed with a key derived
//! from the master key (any server of the appliance verifies it). No
//! credential ever travels in a URL, and query strings are never logged.
//!
//! Failures answer `{"errors": ["…"]}` as the public registry does; what a
//! caller sent is never echoed back.

use std::sync::Arc;

use chrono::Utc;
use hangar_store::modules as store;
use hangar_types::Role;
use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, Method, StatusCode, header};
use warp::reply::{Reply, Response};

use super::Address;
use crate::App;

/// Where the protocol lives, as service discovery announces it.
pub(crate) const MODULES_PATH: &str = "/v1/modules/";

/// The file name of every archive link.
const ARCHIVE: &str = "archive.tar.gz";

/// How long an archive link stays valid.
const LINK_TTL_SECS: i64 = 300;

/// The purpose archive links are signed for.
const LINK_PURPOSE: &str = "module archive link";

/// Why a registry request was refused.
#[derive(Debug, thiserror::Error)]
enum RegistryError {
    #[error("credentials required: Authorization: Bearer <run token or API key>")]
    Unauthenticated,
    #[error("the archive link is invalid or has expired: ask for the download again")]
    BadLink,
    #[error("{0}")]
    NotFound(&'static str),
    #[error("module {module} has no version {version}")]
    NoVersion { module: String, version: String },
    #[error("the registry is read with GET")]
    MethodNotAllowed,
    #[error("the database cannot be reached")]
    Unavailable,
    #[error("internal error")]
    Internal,
}

impl RegistryError {
    fn status(&self) -> StatusCode {
        match self {
            RegistryError::Unauthenticated => StatusCode::UNAUTHORIZED,
            RegistryError::BadLink => StatusCode::FORBIDDEN,
            RegistryError::NotFound(_) | RegistryError::NoVersion { .. } => StatusCode::NOT_FOUND,
            RegistryError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RegistryError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            RegistryError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn into_response(self) -> Response {
        crate::http::json_response(self.status(), &json!({ "errors": [self.to_string()] }))
    }

    fn db(e: impl std::error::Error) -> RegistryError {
        tracing::warn!(error = %hangar_types::error_chain(&e), "module registry: database failure");
        RegistryError::Unavailable
    }

    fn internal(what: &str, e: impl std::error::Error) -> RegistryError {
        tracing::error!(error = %hangar_types::error_chain(&e), "module registry: {what}");
        RegistryError::Internal
    }
}

const NO_MODULE: RegistryError = RegistryError::NotFound("no such module in the registry");

/// The bearer token of an `Authorization` header.
fn bearer(auth: Option<&str>) -> Option<&str> {
    let auth = auth?;
    auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("bearer ")).map(str::trim).filter(|t| !t.is_empty())
}

/// Who is asking, for the log: a live run or a reader.
async fn authorize(app: &App, auth: Option<&str>) -> Result<String, RegistryError> {
    let token = bearer(auth).ok_or(RegistryError::Unauthenticated)?;
    let mut c = app.db.get().await.map_err(RegistryError::db)?;
    if let Some((hangar_store::run_tokens::KIND, _)) = hangar_crypto::token_parts(token) {
        return match hangar_store::run_tokens::holder(&mut c, token).await.map_err(RegistryError::db)? {
            Some(h) => Ok(format!("run {}", h.run_id)),
            None => Err(RegistryError::Unauthenticated),
        };
    }
    match hangar_store::users::resolve_token(&mut c, token).await.map_err(RegistryError::db)? {
        // The registry belongs to no space: whoever sees any space reads it.
        Ok(caller) if caller.access.best().allows(Role::Reader) => Ok(caller.actor()),
        _ => Err(RegistryError::Unauthenticated),
    }
}

/// The message an archive link signs.
fn link_message(version_id: i64, expires: i64) -> String {
    format!("{version_id}:{expires}")
}

/// The archive link of version `v` of `address`, valid until `expires`.
fn archive_link(app: &App, address: &Address, v: &store::ModuleVersionRow, expires: i64) -> String {
    let signature = app.secrets.mac_key(LINK_PURPOSE).sign(link_message(v.id, expires).as_bytes());
    format!("{MODULES_PATH}{address}/{}/{ARCHIVE}?expires={expires}&signature={signature}", v.version)
}

/// `expires` and `signature` of an archive link's query.
fn link_params(query: &str) -> Option<(i64, String)> {
    let mut expires = None;
    let mut signature = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "expires" => expires = v.parse::<i64>().ok(),
            "signature" if v.len() == 64 => signature = Some(v.into_owned()),
            _ => {}
        }
    }
    Some((expires?, signature?))
}

/// The module and version a request names, or 404.
async fn find(
    app: &App,
    address: &Address,
    version: Option<&str>,
) -> Result<(store::ModuleRow, Option<store::ModuleVersionRow>), RegistryError> {
    let mut c = app.db.get().await.map_err(RegistryError::db)?;
    let m = store::find(&mut c, &address.namespace, &address.name, &address.system)
        .await
        .map_err(RegistryError::db)?
        .ok_or(NO_MODULE)?;
    let Some(version) = version else { return Ok((m, None)) };
    let v = store::version(&mut c, m.id, version).await.map_err(RegistryError::db)?.ok_or_else(|| {
        RegistryError::NoVersion { module: address.to_string(), version: version.to_string() }
    })?;
    Ok((m, Some(v)))
}

async fn handle(app: &App, method: Method, tail: &str, auth: Option<String>, query: String) -> Result<Response, RegistryError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(RegistryError::MethodNotAllowed);
    }
    let segments: Vec<&str> = tail.split('/').collect();
    let (ns, name, system, rest) = match segments.as_slice() {
        [ns, name, system, rest @ ..] if (1..=2).contains(&rest.len()) => (*ns, *name, *system, rest),
        _ => return Err(RegistryError::NotFound("no such registry path")),
    };
    // The archive authorizes itself; everything else needs credentials, and
    // an unauthenticated caller learns nothing, not even what exists.
    let archive_asked = matches!(rest, [_, ARCHIVE]);
    let who = if archive_asked { None } else { Some(authorize(app, auth.as_deref()).await?) };
    let address = Address::parse(ns, name, system).map_err(|_| NO_MODULE)?;
    let version = match rest {
        ["versions"] => None,
        [v, "download" | ARCHIVE] => {
            Some(super::parse_version(v).ok_or(RegistryError::NotFound("no such version of the module"))?.to_string())
        }
        _ => return Err(RegistryError::NotFound("no such registry path")),
    };
    let (m, v) = find(app, &address, version.as_deref()).await?;
    match (rest, v) {
        (["versions"], _) => {
            let mut c = app.db.get().await.map_err(RegistryError::db)?;
            let mut all: Vec<semver::Version> = store::versions_of(&mut c, m.id)
                .await
                .map_err(RegistryError::db)?
                .iter()
                .filter_map(|v| semver::Version::parse(&v.version).ok())
                .collect();
            all.sort();
            let versions: Vec<_> = all.iter().map(|v| json!({ "version": v.to_string() })).collect();
            tracing::debug!(module = %address, by = who.as_deref().unwrap_or_default(), "module versions listed");
            Ok(crate::http::json_response(StatusCode::OK, &json!({ "modules": [{ "versions": versions }] })))
        }
        ([_, "download"], Some(v)) => {
            let link = archive_link(app, &address, &v, Utc::now().timestamp() + LINK_TTL_SECS);
            tracing::info!(module = %address, version = %v.version, by = who.as_deref().unwrap_or_default(), "module download");
            let mut r = warp::reply::with_status(String::new(), StatusCode::NO_CONTENT).into_response();
            let value = HeaderValue::from_str(&link).map_err(|e| RegistryError::internal("an archive link", e))?;
            r.headers_mut().insert("x-terraform-get", value);
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(r)
        }
        ([_, ARCHIVE], Some(v)) => {
            let (expires, signature) = link_params(&query).ok_or(RegistryError::BadLink)?;
            let now = Utc::now().timestamp();
            let fresh = expires >= now && expires <= now + LINK_TTL_SECS + 60;
            if !fresh || !app.secrets.mac_key(LINK_PURPOSE).verify(link_message(v.id, expires).as_bytes(), &signature) {
                return Err(RegistryError::BadLink);
            }
            archive(app, &address, &v, method == Method::HEAD).await
        }
        _ => Err(RegistryError::NotFound("no such registry path")),
    }
}

/// The archive's bytes, checked against the SHA-256 recorded at publication.
async fn archive(app: &App, address: &Address, v: &store::ModuleVersionRow, head: bool) -> Result<Response, RegistryError> {
    let bytes = app.objects.get(&v.object_key).await.map_err(|e| RegistryError::internal("reading a module archive", e))?;
    let sha256 = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
    if sha256 != v.sha256 {
        tracing::error!(module = %address, version = %v.version, object = %v.object_key, "module archive does not match its recorded SHA-256");
        return Err(RegistryError::Internal);
    }
    let len = bytes.len();
    let mut r = if head { Response::new(Vec::new().into()) } else { Response::new(bytes.into()) };
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/gzip"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// Service discovery and the module registry protocol.
pub(crate) fn routes(app: Arc<App>) -> BoxedFilter<(Response,)> {
    let discovery = warp::path!(".well-known" / "terraform.json")
        .and(warp::get().or(warp::head()).unify())
        .map(|| crate::http::json_response(StatusCode::OK, &json!({ "modules.v1": MODULES_PATH })));
    let modules = warp::path("v1")
        .and(warp::path("modules"))
        .and(warp::method())
        .and(warp::path::tail())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .then(move |method: Method, tail: warp::path::Tail, auth: Option<String>, query: String| {
            let app = app.clone();
            async move {
                handle(&app, method, tail.as_str(), auth, query).await.unwrap_or_else(RegistryError::into_response)
            }
        });
    discovery.or(modules).unify().boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_carry_an_expiry_and_a_signature_only() {
        let sig = "a".repeat(64);
        assert_eq!(link_params(&format!("expires=12&signature={sig}")), Some((12, sig.clone())));
        assert_eq!(link_params(&format!("signature={sig}")), None);
        assert_eq!(link_params("expires=12&signature=abc"), None);
        assert_eq!(link_params(&format!("expires=x&signature={sig}")), None);
        assert_eq!(link_params(""), None);
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer(Some("Bearer hrt_a_b")), Some("hrt_a_b"));
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(Some("Basic x")), None);
        assert_eq!(bearer(None), None);
    }
}
