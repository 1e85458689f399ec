//! Request handling: which path is which page, who is asking, the checks on
//! every state-changing request (session, CSRF token, `Origin`), and turning
//! a template or a refusal into a response.

mod auth;
mod manage;
mod modules;
mod policies;
mod spaces;
mod runs;
mod stacks;

use std::sync::Arc;

use askama::Template;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use warp::reply::{Reply, Response};

use crate::Console;
use crate::backend::OpError;
use crate::session::{self, CSRF_FIELD};
use crate::view::{Frame, Viewer};

/// Largest form body accepted.
const MAX_FORM: usize = 256 * 1024;

/// First path segments the console answers; anything else is left to the
/// server's other routes.
const PREFIXES: [&str; 17] = [
    "", "login", "logout", "account", "stacks", "runs", "pools", "workers", "vcs", "contexts", "modules", "policies", "spaces", "admin", "keys",
    "events", "favicon.ico",
];

pub(crate) fn routes(console: Arc<Console>) -> BoxedFilter<(Response,)> {
    warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and_then(move |method: Method, path: warp::path::FullPath, query: String, headers: HeaderMap, body| {
            let console = console.clone();
            async move {
                let path = path.as_str().to_string();
                let first = path.trim_start_matches('/').split('/').next().unwrap_or_default();
                if let Some(name) = path.strip_prefix("/assets/") {
                    if method != Method::GET && method != Method::HEAD {
                        return Err(warp::reject::not_found());
                    }
                    let inm = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok());
                    return crate::assets::serve(name, inm).ok_or_else(warp::reject::not_found);
                }
                if !PREFIXES.contains(&first) {
                    return Err(warp::reject::not_found());
                }
                let form = if method == Method::POST {
                    match read_form(body).await {
                        Ok(f) => f,
                        Err(r) => return Ok(r),
                    }
                } else {
                    Vec::new()
                };
                let req = Req { method, path, query, headers, form };
                Ok::<_, warp::Rejection>(dispatch(&console, req).await)
            }
        })
        .boxed()
}

/// A request as the handlers see it.
pub(crate) struct Req {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) headers: HeaderMap,
    pub(crate) form: Vec<(String, String)>,
}

impl Req {
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        self.form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub(crate) fn query_param(&self, name: &str) -> Option<String> {
        serde_urlencoded::from_str::<Vec<(String, String)>>(&self.query)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn read_form<S, B>(body: S) -> Result<Vec<(String, String)>, Response>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    let mut body = std::pin::pin!(body);
    let mut buf = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|_| plain(StatusCode::BAD_REQUEST, "cannot read the form"))?;
        if buf.len() + chunk.remaining() > MAX_FORM {
            return Err(plain(StatusCode::PAYLOAD_TOO_LARGE, "the form is larger than 256 KiB"));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            buf.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    serde_urlencoded::from_bytes(&Bytes::from(buf)).map_err(|_| plain(StatusCode::BAD_REQUEST, "the form is not URL-encoded"))
}

/// A signed-in request: the session's token and who it is.
pub(crate) struct Session {
    pub(crate) token: String,
    pub(crate) viewer: Viewer,
}

async fn dispatch(c: &Console, req: Req) -> Response {
    let segs: Vec<String> = req.path.trim_matches('/').split('/').map(str::to_string).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let get = req.method == Method::GET || req.method == Method::HEAD;
    let post = req.method == Method::POST;

    // Anonymous pages.
    match (segs.as_slice(), get, post) {
        (["favicon.ico"], true, _) => return see_other(crate::assets::paths().icon),
        (["login"], true, _) => return auth::login_page(c, &req).await,
        (["login"], _, true) => {
            if !origin_ok(c, &req) {
                return refused_origin();
            }
            return auth::login(c, &req).await;
        }
        _ => {}
    }

    // A form from another site is refused as such, signed in or not (with
    // `SameSite=Strict` it arrives without the cookie).
    if post && !origin_ok(c, &req) {
        return refused_origin();
    }
    let session = match authenticate(c, &req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if post {
        let presented = req.field(CSRF_FIELD).unwrap_or_default();
        if !session::csrf_matches(&session.token, presented) {
            return error_page(
                Some(&session.viewer),
                StatusCode::FORBIDDEN,
                "Form expired",
                "This form does not carry your session's token (it may come from another site, or from before you signed in again). Go back, reload the page and try again.",
            );
        }
    }

    match (segs.as_slice(), get, post) {
        ([""], true, _) => see_other("/stacks"),
        (["logout"], _, true) => auth::logout(c, &session).await,
        (["stacks"], true, _) => stacks::list(c, &session, &req).await,
        (["stacks", "new"], true, _) => stacks::new_page(c, &session).await,
        (["stacks"], _, true) => stacks::create(c, &session, &req).await,
        (["stacks", slug], true, _) => stacks::show(c, &session, &req, slug).await,
        (["stacks", slug, "trigger"], _, true) => stacks::trigger(c, &session, slug).await,
        (["stacks", slug, "reconcile"], _, true) => stacks::reconcile(c, &session, slug).await,
        (["stacks", slug, "task"], _, true) => stacks::task(c, &session, &req, slug).await,
        (["stacks", slug, "dependencies"], _, true) => stacks::add_dependency(c, &session, &req, slug).await,
        (["stacks", slug, "dependencies", "remove"], _, true) => stacks::remove_dependency(c, &session, &req, slug).await,
        (["stacks", slug, "variables"], _, true) => stacks::set_variable(c, &session, &req, slug).await,
        (["stacks", slug, "variables", "delete"], _, true) => stacks::delete_variable(c, &session, &req, slug).await,
        (["stacks", slug, "settings"], _, true) => stacks::settings(c, &session, &req, slug).await,
        (["stacks", slug, "unlock"], _, true) => stacks::unlock(c, &session, &req, slug).await,
        (["stacks", slug, "delete"], _, true) => stacks::delete(c, &session, &req, slug).await,
        (["runs", id], true, _) => runs::show(c, &session, id).await,
        (["runs", id, action @ ("confirm" | "discard" | "cancel")], _, true) => runs::act(c, &session, id, action).await,
        (["runs", id, "review"], _, true) => runs::review(c, &session, &req, id).await,
        (["events", "changes"], true, _) => runs::changes(c, &session),
        (["pools"], true, _) => manage::pools(c, &session).await,
        (["pools"], _, true) => manage::create_pool(c, &session, &req).await,
        (["pools", pool, "token"], _, true) => manage::join_token(c, &session, pool).await,
        (["workers", id, action @ ("drain" | "undrain" | "revoke")], _, true) => manage::worker_action(c, &session, id, action).await,
        (["vcs"], true, _) => manage::vcs(c, &session).await,
        (["vcs"], _, true) => manage::create_vcs(c, &session, &req).await,
        (["vcs", name], true, _) => manage::vcs_one(c, &session, name).await,
        (["contexts"], true, _) => manage::contexts(c, &session).await,
        (["modules"], true, _) => modules::list(c, &session).await,
        (["policies"], true, _) => policies::list(c, &session).await,
        (["policies", "test"], _, true) => policies::test(c, &session, &req).await,
        (["spaces"], true, _) => spaces::list(c, &session).await,
        (["spaces"], _, true) => spaces::create(c, &session, &req).await,
        (["spaces", slug], true, _) => spaces::show(c, &session, slug).await,
        (["spaces", slug, action @ ("grant" | "revoke" | "delete")], _, true) => spaces::act(c, &session, &req, slug, action).await,
        (["contexts"], _, true) => manage::create_context(c, &session, &req).await,
        (["contexts", slug], true, _) => manage::context(c, &session, slug).await,
        (["contexts", slug, "variables"], _, true) => manage::context_action(c, &session, &req, slug, "variables").await,
        (["contexts", slug, "variables", "delete"], _, true) => {
            manage::context_action(c, &session, &req, slug, "variables/delete").await
        }
        (["contexts", slug, action @ ("attach" | "detach")], _, true) => manage::context_action(c, &session, &req, slug, action).await,
        (["admin"], true, _) => manage::admin(c, &session).await,
        (["admin", "users"], _, true) => manage::create_user(c, &session, &req).await,
        (["admin", "users", id], _, true) => manage::update_user(c, &session, &req, id, None).await,
        (["admin", "users", id, action @ ("enable" | "disable")], _, true) => {
            manage::update_user(c, &session, &req, id, Some(action)).await
        }
        (["admin", "jobs", id, "retry"], _, true) => manage::retry_job(c, &session, id).await,
        (["admin", "audit"], true, _) => manage::audit(c, &session, &req).await,
        (["admin", "system"], true, _) => manage::system(c, &session).await,
        (["admin", "bundles", id, "apply"], _, true) => manage::apply_bundle(c, &session, id).await,
        (["admin", "bundles", id, "upgrade"], _, true) => manage::upgrade_appliance(c, &session, id).await,
        (["keys", id, "revoke"], _, true) => manage::revoke_key(c, &session, id).await,
        (["account"], true, _) => manage::account(c, &session, None).await,
        (["account", "password"], _, true) => manage::change_password(c, &session, &req).await,
        (["account", "keys"], _, true) => manage::create_key(c, &session, &req).await,
        _ if get || post => not_found(Some(&session.viewer)),
        _ => plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}

/// The session of the request's cookie, or a redirect to the login page.
async fn authenticate(c: &Console, req: &Req) -> Result<Session, Response> {
    let to_login = |clear: bool| {
        let next = if req.method == Method::GET { req.path.clone() } else { "/stacks".into() };
        let mut r = see_other(&format!("/login?next={}", urlencode(&next)));
        // Only a cookie that was sent and is over is removed: a request that
        // came without one (from another site, say) must not sign anyone out.
        if clear {
            r.headers_mut().append(header::SET_COOKIE, session::clear_cookie());
        }
        r
    };
    let Some(token) = session::session_token(req.header(header::COOKIE)) else { return Err(to_login(false)) };
    match c.backend.session(&token).await {
        Ok(Some(user)) => {
            let csrf = session::csrf_token(&token);
            Ok(Session { token, viewer: Viewer { email: user.email, role: user.role, access: user.access, csrf } })
        }
        Ok(None) => Err(to_login(true)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check a console session");
            Err(error_page(None, StatusCode::SERVICE_UNAVAILABLE, "Unavailable", "The database cannot be reached just now. Try again in a moment."))
        }
    }
}

fn origin_ok(c: &Console, req: &Req) -> bool {
    session::same_origin(req.header(header::ORIGIN), req.header(header::HOST), &c.origin)
}

fn refused_origin() -> Response {
    error_page(
        None,
        StatusCode::FORBIDDEN,
        "Refused",
        "This form was not sent from a page of this Hangar appliance, so nothing was changed.",
    )
}

pub(crate) fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)]).unwrap_or_default().trim_start_matches('=').to_string()
}

/// A rendered page with `status`.
pub(crate) fn html<T: Template>(status: StatusCode, page: &T) -> Response {
    match page.render() {
        Ok(body) => {
            let mut r = Response::new(body.into());
            *r.status_mut() = status;
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            // Pages show what a session may see: never kept by a cache.
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot render a console page");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut r = Response::new(text.into());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

pub(crate) fn see_other(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    frame: Frame,
    heading: String,
    message: String,
    back: &'static str,
    back_label: &'static str,
}

pub(crate) fn error_page(viewer: Option<&Viewer>, status: StatusCode, heading: &str, message: &str) -> Response {
    let (back, back_label) = if viewer.is_some() { ("/stacks", "Back to the stacks") } else { ("/login", "Sign in") };
    let page = ErrorPage {
        frame: Frame::new(heading, "", viewer.cloned()),
        heading: heading.to_string(),
        message: message.to_string(),
        back,
        back_label,
    };
    html(status, &page)
}

pub(crate) fn not_found(viewer: Option<&Viewer>) -> Response {
    error_page(viewer, StatusCode::NOT_FOUND, "Not found", "There is nothing at this address. It may have been deleted, or the link is wrong.")
}

/// An API refusal as a page: its status follows the error's code.
pub(crate) fn op_error(viewer: &Viewer, e: &OpError) -> Response {
    let (status, heading) = match e.code.as_str() {
        "FORBIDDEN" => (StatusCode::FORBIDDEN, "Not allowed"),
        "UNAUTHENTICATED" => (StatusCode::UNAUTHORIZED, "Signed out"),
        "NOT_FOUND" => (StatusCode::NOT_FOUND, "Not found"),
        "BAD_USER_INPUT" => (StatusCode::UNPROCESSABLE_ENTITY, "Not accepted"),
        "CONFLICT" | "REFUSED" => (StatusCode::CONFLICT, "Refused"),
        "UNAVAILABLE" => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "Failed"),
    };
    error_page(Some(viewer), status, heading, &e.message)
}

/// A database failure while reading a page.
pub(crate) fn unavailable(viewer: Option<&Viewer>, e: &dyn std::error::Error) -> Response {
    tracing::warn!(error = %hangar_types::error_chain(e), "console page cannot read the database");
    error_page(viewer, StatusCode::SERVICE_UNAVAILABLE, "Unavailable", "The database cannot be reached just now. Try again in a moment.")
}
