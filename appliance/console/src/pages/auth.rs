//! Signing in and out: the API's `login` (its password check and per-account
//! throttling) and `logout`, with the session token in the cookie.

use askama::Template;
use serde_json::json;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use super::{Req, Session, html, see_other};
use crate::Console;
use crate::session;
use crate::view::Frame;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    frame: Frame,
    error: Option<String>,
    email: String,
    next: String,
}

/// Where to go after signing in: a path of this site only.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/\\") && n.len() <= 512 => n.to_string(),
        _ => "/stacks".to_string(),
    }
}

pub(super) async fn login_page(c: &Console, req: &Req) -> Response {
    // Already signed in: straight on.
    if let Some(token) = session::session_token(req.headers.get(header::COOKIE).and_then(|v| v.to_str().ok()))
        && matches!(c.backend.session(&token).await, Ok(Some(_)))
    {
        return see_other(&safe_next(req.query_param("next").as_deref()));
    }
    let page = LoginPage {
        frame: Frame::new("Sign in", "", None),
        error: None,
        email: String::new(),
        next: safe_next(req.query_param("next").as_deref()),
    };
    html(StatusCode::OK, &page)
}

pub(super) async fn login(c: &Console, req: &Req) -> Response {
    let email = req.field("email").unwrap_or_default().trim().to_string();
    let password = req.field("password").unwrap_or_default();
    let next = safe_next(req.field("next"));
    let answer = c
        .backend
        .execute(
            None,
            "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
            json!({ "e": email, "p": password }),
        )
        .await;
    match answer.map(|d| d["login"]["token"].as_str().map(str::to_string)) {
        Ok(Some(token)) => {
            let mut r = see_other(&next);
            r.headers_mut().append(header::SET_COOKIE, session::set_cookie(&token, c.session_ttl));
            r
        }
        Ok(None) => super::plain(StatusCode::INTERNAL_SERVER_ERROR, "login answered without a token"),
        Err(e) => {
            let status = if e.code == "UNAVAILABLE" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::UNAUTHORIZED };
            let message = if e.code == "UNAUTHENTICATED" {
                "The email address or the password is wrong.".to_string()
            } else {
                e.message
            };
            let page = LoginPage { frame: Frame::new("Sign in", "", None), error: Some(message), email, next };
            html(status, &page)
        }
    }
}

pub(super) async fn logout(c: &Console, s: &Session) -> Response {
    if let Err(e) = c.backend.execute(Some(&s.token), "mutation { logout }", json!({})).await {
        tracing::info!(error = %e, "console logout: the session was already over");
    }
    let mut r = see_other("/login");
    r.headers_mut().append(header::SET_COOKIE, session::clear_cookie());
    r.headers_mut().insert("clear-site-data", HeaderValue::from_static("\"cache\""));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/runs/4")), "/runs/4");
        for bad in ["https://evil.example/", "//evil.example", "/\\evil.example", "javascript:alert(1)"] {
            assert_eq!(safe_next(Some(bad)), "/stacks", "{bad}");
        }
        assert_eq!(safe_next(None), "/stacks");
    }
}
